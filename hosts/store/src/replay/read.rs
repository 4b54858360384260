//! Reading the inputs, batch by batch.

use crate::error::{Error, IoContext};
use crate::input::{Batch, Input, LineReader};

use super::ReplayOptions;

/// An open input's lines.
pub(super) type InputLines = LineReader<Box<dyn std::io::BufRead + Send>>;

/// The inputs, read batch by batch.
pub(super) struct Reader<'a> {
    pub(super) inputs: &'a [Input],
    /// Each input's number in `events.log`.
    pub(super) ids: Vec<u32>,
    pub(super) next_input: usize,
    /// The input being read: its index, its number in `events.log`, its lines.
    pub(super) lines: Option<(usize, u32, InputLines)>,
    pub(super) max_record_bytes: u32,
}

impl Reader<'_> {
    /// Fills `batch` with the next lines; returns the input's index and number, or `None` at the
    /// end of the last input.
    pub(super) fn next(
        &mut self,
        batch: &mut Batch,
        opts: &ReplayOptions,
    ) -> Result<Option<(usize, u32)>, Error> {
        loop {
            if let Some((i, id, lines)) = &mut self.lines {
                let name = &self.inputs[*i].name;
                if lines
                    .fill(batch, opts.batch_lines, opts.batch_bytes)
                    .io(|| format!("reading {name}"))?
                {
                    return Ok(Some((*i, *id)));
                }
                self.lines = None;
            }
            let Some(input) = self.inputs.get(self.next_input) else {
                return Ok(None);
            };
            let id = self.ids[self.next_input];
            let lines = LineReader::new(input.open()?, self.max_record_bytes);
            self.lines = Some((self.next_input, id, lines));
            self.next_input += 1;
        }
    }
}
