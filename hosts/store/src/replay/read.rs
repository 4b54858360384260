//! Reading the inputs, batch by batch.

use std::io::{BufRead, Cursor};
use std::path::Path;

use crate::error::{Error, IoContext};
use crate::export::ManifestFile;
use crate::input::{Batch, Input, InputSource, LineReader};

use super::ReplayOptions;

/// An open input's lines.
pub(super) type InputLines = LineReader<Box<dyn BufRead + Send>>;

/// Renders a table export's data file (its path, its manifest line) as event records.
pub(super) type RenderExport<'a> = dyn Fn(&Path, &ManifestFile) -> Result<Vec<u8>, Error> + 'a;

/// The inputs, read batch by batch.
pub(super) struct Reader<'a> {
    pub(super) inputs: &'a [Input],
    /// Each input's number in `events.log`.
    pub(super) ids: Vec<u32>,
    pub(super) next_input: usize,
    /// The input being read: its index, its number in `events.log`, its lines.
    pub(super) lines: Option<(usize, u32, InputLines)>,
    pub(super) max_record_bytes: u32,
    /// Renders a table export's data file as event records, through the core.
    pub(super) render: &'a RenderExport<'a>,
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
            let reader: Box<dyn BufRead + Send> = match &input.source {
                InputSource::ExportData { path, entry } => {
                    Box::new(Cursor::new((self.render)(path, entry)?))
                }
                _ => input.open()?,
            };
            let lines = LineReader::new(reader, self.max_record_bytes);
            self.lines = Some((self.next_input, id, lines));
            self.next_input += 1;
        }
    }
}
