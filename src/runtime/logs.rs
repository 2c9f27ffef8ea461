//! Container logs in the CRI format the kubelet and `kubectl logs` read:
//! one line per record, `<RFC 3339 nano timestamp> <stdout|stderr> <F|P> <text>`,
//! `P` marking a partial line (a line longer than the buffer is split),
//! `F` a full one. The file rotates by size: the current file is renamed
//! `<name>.<UTC yyyymmdd-hhmmss>` and the oldest rotated files beyond the
//! limit are removed (the kubelet's `containerLogMaxSize`/`MaxFiles`).

#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Longest line written as one record; longer ones are split with `P`.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

pub struct CriLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: usize,
    /// Unterminated text per stream, waiting for its newline.
    pending: [Vec<u8>; 2],
}

/// When container logs rotate: at `max_size` bytes, keeping `max_files`
/// files (the current one included) — the kubelet's
/// `containerLogMaxSize` and `containerLogMaxFiles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_size: u64,
    pub max_files: usize,
}

impl Default for LogLimits {
    /// The kubelet's defaults: 10 MiB, 5 files.
    fn default() -> Self {
        LogLimits {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

impl CriLog {
    /// Open (appending) the log at `path`, creating its directory.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn open(path: &Path, max_size: u64, max_files: usize) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            max_size: max_size.max(1024),
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Record what the container wrote on `stream`.
    ///
    /// # Errors
    /// Writing or rotating the file failed.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    let mut line = std::mem::take(&mut self.pending[idx]);
                    line.extend_from_slice(&data[..nl]);
                    self.emit_long(stream, &line, true)?;
                    data = &data[nl + 1..];
                }
                None => {
                    self.pending[idx].extend_from_slice(data);
                    data = &[];
                    if self.pending[idx].len() >= MAX_LINE {
                        let chunk: Vec<u8> = self.pending[idx].drain(..MAX_LINE).collect();
                        self.record(stream, &chunk, false)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The stream ended: what is left is a full line.
    ///
    /// # Errors
    /// Writing failed.
    pub fn close_stream(&mut self, stream: Stream) -> io::Result<()> {
        let rest = std::mem::take(&mut self.pending[stream as usize]);
        if !rest.is_empty() {
            self.emit_long(stream, &rest, true)?;
        }
        Ok(())
    }

    fn emit_long(&mut self, stream: Stream, line: &[u8], full: bool) -> io::Result<()> {
        let mut chunks = line.chunks(MAX_LINE).peekable();
        if line.is_empty() {
            return self.record(stream, b"", full);
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.record(stream, chunk, full && last)?;
        }
        Ok(())
    }

    fn record(&mut self, stream: Stream, text: &[u8], full: bool) -> io::Result<()> {
        let mut rec = format!(
            "{} {} {} ",
            jiff::Timestamp::now(),
            stream.name(),
            if full { "F" } else { "P" }
        )
        .into_bytes();
        rec.extend_from_slice(text);
        rec.push(b'\n');
        if self.size + rec.len() as u64 > self.max_size && self.size > 0 {
            self.rotate()?;
        }
        self.file.write_all(&rec)?;
        self.size += rec.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let stamp = jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S%.f");
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rotated = self.path.with_file_name(format!("{name}.{stamp}"));
        fs::rename(&self.path, &rotated)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        // Keep max_files - 1 rotated files besides the current one.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let prefix = format!("{name}.");
        let mut old: Vec<PathBuf> = fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .collect();
        old.sort();
        let excess = old.len().saturating_sub(self.max_files - 1);
        for p in &old[..excess] {
            fs::remove_file(p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<(String, String, String)> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let ts = parts.next().unwrap();
                assert!(ts.parse::<jiff::Timestamp>().is_ok(), "timestamp {ts:?}");
                (
                    parts.next().unwrap().to_owned(),
                    parts.next().unwrap().to_owned(),
                    parts.next().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_are_recorded_per_stream_in_cri_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let mut log = CriLog::open(&path, 1 << 20, 5).unwrap();
        log.write(Stream::Stdout, b"hello\nwor").unwrap();
        log.write(Stream::Stderr, b"oops\n").unwrap();
        log.write(Stream::Stdout, b"ld\n\n").unwrap();
        log.write(Stream::Stdout, b"no newline").unwrap();
        log.close_stream(Stream::Stdout).unwrap();
        let r = records(&path);
        let want = [
            ("stdout", "F", "hello"),
            ("stderr", "F", "oops"),
            ("stdout", "F", "world"),
            ("stdout", "F", ""),
            ("stdout", "F", "no newline"),
        ];
        assert_eq!(r.len(), want.len(), "{r:?}");
        for (got, want) in r.iter().zip(want) {
            assert_eq!((got.0.as_str(), got.1.as_str(), got.2.as_str()), want);
        }
    }

    #[test]
    fn long_lines_are_split_into_partials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = CriLog::open(&path, 1 << 20, 5).unwrap();
        let long = vec![b'x'; MAX_LINE + 10];
        log.write(Stream::Stdout, &long).unwrap();
        log.write(Stream::Stdout, b"\n").unwrap();
        let r = records(&path);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].1.as_str(), r[0].2.len()), ("P", MAX_LINE));
        assert_eq!((r[1].1.as_str(), r[1].2.len()), ("F", 10));
    }

    #[test]
    fn files_rotate_by_size_and_old_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = CriLog::open(&path, 2048, 3).unwrap();
        for i in 0..200 {
            log.write(
                Stream::Stdout,
                format!("line {i:04} {}\n", "y".repeat(40)).as_bytes(),
            )
            .unwrap();
        }
        let files: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(files.len(), 3, "the current file and two rotated ones");
        assert!(fs::metadata(&path).unwrap().len() <= 2048);
        let last = records(&path).pop().unwrap();
        assert!(last.2.starts_with("line 0199"), "{last:?}");
    }
}
