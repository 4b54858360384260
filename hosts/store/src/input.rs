//! NDJSON input read in bounded batches: one buffer and a span per line, ready for the core.
//!
//! Memory stays bounded by the batch size whatever the input size; only a single line longer
//! than the contract's limit is held whole (to quarantine its original bytes), and the core is
//! handed just enough of it to see that it is too large.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;

use tripflow_runtime::core::Span;

use crate::error::{Error, IoContext};

/// Where input comes from.
#[derive(Clone, Debug)]
pub enum InputSource {
    /// Standard input (`-`).
    Stdin,
    /// A file.
    File(PathBuf),
    /// A data file of a table export ([`crate::export`]): the replay has the core render its
    /// trip items as event records when it comes to it, one data file in memory at a time.
    ExportData {
        /// The gzip data file.
        path: PathBuf,
        /// Its line of the export's `manifest-files.json`, which it is checked against.
        entry: crate::export::ManifestFile,
    },
}

/// One input named on the command line.
#[derive(Clone, Debug)]
pub struct Input {
    /// How it is named in summaries and quarantine records.
    pub name: String,
    /// Where to read it.
    pub source: InputSource,
}

impl Input {
    /// `-` is standard input; anything else a file path.
    pub fn from_arg(arg: &str) -> Input {
        if arg == "-" {
            Input {
                name: "stdin".to_owned(),
                source: InputSource::Stdin,
            }
        } else {
            Input {
                name: arg.to_owned(),
                source: InputSource::File(PathBuf::from(arg)),
            }
        }
    }

    /// Opens the input for reading; a gzip input (by its magic bytes, whatever its name) is
    /// decompressed, all of its members in turn.
    pub fn open(&self) -> Result<Box<dyn BufRead + Send>, Error> {
        // Decided on the first read, so that opening an input (to check it can be) reads
        // nothing: standard input is read once.
        Ok(Box::new(Sniffed::Undecided(self.open_raw()?)))
    }

    /// Opens the input's bytes as they are, compressed or not.
    pub fn open_raw(&self) -> Result<Box<dyn BufRead + Send>, Error> {
        match &self.source {
            InputSource::Stdin => Ok(Box::new(BufReader::with_capacity(1 << 20, io::stdin()))),
            InputSource::File(path) | InputSource::ExportData { path, .. } => {
                let file = File::open(path).io(|| {
                    format!(
                        "cannot read {}: check the path (use - for stdin)",
                        path.display()
                    )
                })?;
                if file.metadata().is_ok_and(|m| m.is_dir()) {
                    return Err(Error::Io {
                        what: format!("{} is a directory: pass NDJSON files", path.display()),
                        source: io::Error::from(io::ErrorKind::IsADirectory),
                    });
                }
                Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
            }
        }
    }

    /// Size in bytes, when known (for progress).
    pub fn size(&self) -> Option<u64> {
        match &self.source {
            InputSource::Stdin => None,
            InputSource::File(path) => std::fs::metadata(path).ok().map(|m| m.len()),
            // Progress counts the rendered events, not the compressed items.
            InputSource::ExportData { .. } => None,
        }
    }
}

/// `reader` itself, or its decompressed bytes when it starts with the gzip magic bytes.
pub fn gunzip_if_compressed(
    mut reader: Box<dyn BufRead + Send>,
) -> io::Result<Box<dyn BufRead + Send>> {
    let first = fill(&mut reader)?;
    if first.len() >= 2 {
        return Ok(if first.starts_with(&[0x1f, 0x8b]) {
            gunzip(reader)
        } else {
            reader
        });
    }
    // A pipe may hand over a single byte first: take up to two before deciding.
    let mut head = first.to_vec();
    reader.consume(head.len());
    while head.len() == 1 {
        let more = fill(&mut reader)?;
        let Some(&b) = more.first() else { break };
        head.push(b);
        reader.consume(1);
    }
    let whole: Box<dyn BufRead + Send> =
        Box::new(BufReader::new(io::Cursor::new(head).chain(reader)));
    let mut whole = whole;
    Ok(if fill(&mut whole)?.starts_with(&[0x1f, 0x8b]) {
        gunzip(whole)
    } else {
        whole
    })
}

/// The next buffered bytes, read through interrupted calls.
fn fill(reader: &mut Box<dyn BufRead + Send>) -> io::Result<&[u8]> {
    loop {
        match reader.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    reader.fill_buf()
}

fn gunzip(reader: Box<dyn BufRead + Send>) -> Box<dyn BufRead + Send> {
    let gz = flate2::bufread::MultiGzDecoder::new(reader);
    Box::new(BufReader::with_capacity(1 << 20, Gunzip(gz)))
}

/// A reader that looks at its first bytes, on its first read, to decide whether it is gzip.
enum Sniffed {
    Undecided(Box<dyn BufRead + Send>),
    Ready(Box<dyn BufRead + Send>),
    /// Deciding failed; the error was returned.
    Failed,
}

impl Sniffed {
    fn ready(&mut self) -> io::Result<&mut Box<dyn BufRead + Send>> {
        if let Sniffed::Undecided(_) = self {
            let Sniffed::Undecided(raw) = std::mem::replace(self, Sniffed::Failed) else {
                unreachable!("checked above")
            };
            *self = Sniffed::Ready(gunzip_if_compressed(raw)?);
        }
        match self {
            Sniffed::Ready(r) => Ok(r),
            _ => Err(io::Error::other("the input failed before")),
        }
    }
}

impl io::Read for Sniffed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.ready()?.read(buf)
    }
}

impl BufRead for Sniffed {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.ready()?.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        if let Sniffed::Ready(r) = self {
            r.consume(n);
        }
    }
}

/// A gzip stream whose errors say what to do about them.
struct Gunzip<R>(R);

impl<R: io::Read> io::Read for Gunzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            let kind = match e.kind() {
                io::ErrorKind::Interrupted => return e,
                io::ErrorKind::UnexpectedEof => io::ErrorKind::UnexpectedEof,
                _ => io::ErrorKind::InvalidData,
            };
            io::Error::new(
                kind,
                format!(
                    "corrupt gzip data ({e}): the file is truncated or damaged; check it with \
                     `gzip -t`, then fetch or compress it again"
                ),
            )
        })
    }
}

/// Lines of one input, with their positions.
#[derive(Default)]
pub(crate) struct Batch {
    /// The lines' bytes, back to back, without line terminators.
    pub buf: Vec<u8>,
    /// One span per line.
    pub spans: Vec<Span>,
    /// 1-based line number of each span.
    pub lines: Vec<u64>,
    /// Full bytes of lines too large to hand to the core whole, by span index.
    pub oversized: Vec<(usize, Vec<u8>)>,
    /// Input bytes consumed for this batch.
    pub bytes_read: u64,
}

impl Batch {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.spans.clear();
        self.lines.clear();
        self.oversized.clear();
        self.bytes_read = 0;
    }

    /// The original bytes of span `i`.
    pub fn raw(&self, i: usize) -> &[u8] {
        if let Some((_, full)) = self.oversized.iter().find(|(j, _)| *j == i) {
            return full;
        }
        let s = self.spans[i];
        &self.buf[s.offset as usize..(s.offset + s.len) as usize]
    }
}

/// Splits a reader into batches of lines.
pub(crate) struct LineReader<R> {
    reader: R,
    line: u64,
    /// The loaded core's record limit (`events.limits`).
    max_record_bytes: usize,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(reader: R, max_record_bytes: u32) -> Self {
        Self::starting_after(reader, max_record_bytes, 0)
    }

    /// A reader whose first line is line `line + 1` of its input (a split of a larger input).
    pub fn starting_after(reader: R, max_record_bytes: u32, line: u64) -> Self {
        LineReader {
            reader,
            line,
            max_record_bytes: max_record_bytes as usize,
        }
    }

    /// Fills `batch` (cleared first) with up to `max_lines` lines or about `max_bytes`;
    /// returns false when the input is exhausted and nothing was read.
    pub fn fill(
        &mut self,
        batch: &mut Batch,
        max_lines: usize,
        max_bytes: usize,
    ) -> io::Result<bool> {
        batch.clear();
        let limit = self.max_record_bytes;
        while batch.spans.len() < max_lines && batch.buf.len() < max_bytes {
            let start = batch.buf.len();
            let n = read_line(&mut self.reader, &mut batch.buf)?;
            if n == 0 {
                break;
            }
            batch.bytes_read += n as u64;
            self.line += 1;
            if batch.buf.last() == Some(&b'\n') {
                batch.buf.pop();
                if batch.buf.last() == Some(&b'\r') && batch.buf.len() > start {
                    batch.buf.pop();
                }
            }
            if batch.buf.len() - start > limit {
                let full = batch.buf.split_off(start);
                batch.buf.extend_from_slice(&full[..=limit]);
                batch.oversized.push((batch.spans.len(), full));
            }
            batch.spans.push(Span {
                offset: start as u32,
                len: (batch.buf.len() - start) as u32,
            });
            batch.lines.push(self.line);
        }
        Ok(!batch.spans.is_empty())
    }
}

/// `read_until(b'\n')` that keeps reading through interrupted calls.
fn read_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        match reader.read_until(b'\n', buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripflow_runtime::core::MAX_RECORD_BYTES;

    #[test]
    fn splits_lines_with_positions() {
        let data = b"a\r\n\nbb\nlast".to_vec();
        let mut r = LineReader::new(&data[..], MAX_RECORD_BYTES);
        let mut b = Batch::default();
        assert!(r.fill(&mut b, 2, 1 << 20).unwrap());
        assert_eq!(b.lines, [1, 2]);
        assert_eq!(b.raw(0), b"a");
        assert_eq!(b.raw(1), b"");
        assert!(r.fill(&mut b, 10, 1 << 20).unwrap());
        assert_eq!(b.lines, [3, 4]);
        assert_eq!(b.raw(0), b"bb");
        assert_eq!(b.raw(1), b"last");
        assert!(!r.fill(&mut b, 10, 1 << 20).unwrap());
    }

    #[test]
    fn oversized_lines_keep_their_bytes_but_pass_a_prefix() {
        let mut data = vec![b'x'; MAX_RECORD_BYTES as usize + 10];
        data.extend_from_slice(b"\n{}\n");
        let mut r = LineReader::new(&data[..], MAX_RECORD_BYTES);
        let mut b = Batch::default();
        r.fill(&mut b, 10, 1 << 30).unwrap();
        assert_eq!(b.spans[0].len, MAX_RECORD_BYTES + 1);
        assert_eq!(b.raw(0).len(), MAX_RECORD_BYTES as usize + 10);
        assert_eq!(b.raw(1), b"{}");
    }
}
