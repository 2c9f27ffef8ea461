//! `kubectl logs` from the CRI log files: records become the container's
//! own output again (`P` parts joined, `F` ending a line), with the
//! kubelet's options — `timestamps`, `tailLines`, `sinceSeconds` /
//! `sinceTime`, `limitBytes`, `previous`; `follow` is done by the caller
//! reading on from the returned offset.

use std::path::{Path, PathBuf};

/// The options `pods/log` takes, from its query string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<jiff::Timestamp>,
    pub limit_bytes: Option<usize>,
}

impl LogOptions {
    pub fn parse(query: &str) -> Self {
        let mut o = Self::default();
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            let v = v.replace("%3A", ":").replace("%3a", ":");
            match k {
                "follow" => o.follow = v == "true",
                "previous" => o.previous = v == "true",
                "timestamps" => o.timestamps = v == "true",
                "tailLines" => o.tail_lines = v.parse().ok(),
                "limitBytes" => o.limit_bytes = v.parse().ok(),
                "sinceSeconds" => {
                    o.since = v.parse::<i64>().ok().and_then(|s| {
                        jiff::Timestamp::now()
                            .checked_sub(jiff::SignedDuration::from_secs(s))
                            .ok()
                    });
                }
                "sinceTime" => o.since = v.parse().ok(),
                _ => {}
            }
        }
        o
    }
}

/// The log file of a container's newest instance (or the one before,
/// with `previous`) under `dir` (`<log-dir>/<ns>_<pod>_<uid>/<container>`),
/// and its restart number.
pub fn file_for(dir: &Path, previous: bool) -> Option<(PathBuf, u32)> {
    let mut restarts: Vec<u32> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    restarts.sort_unstable();
    let n = if previous {
        *restarts.iter().rev().nth(1)?
    } else {
        *restarts.last()?
    };
    Some((dir.join(format!("{n}.log")), n))
}

/// Turn CRI records into output. `partial_open` says whether the previous
/// chunk ended in the middle of a line (so no timestamp is due).
pub fn render(records: &str, opts: &LogOptions, partial_open: &mut bool) -> String {
    let mut out = String::new();
    for line in records.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(ts), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let text = parts.next().unwrap_or_default();
        if let Some(since) = opts.since
            && ts.parse::<jiff::Timestamp>().is_ok_and(|t| t < since)
        {
            continue;
        }
        if opts.timestamps && !*partial_open {
            out.push_str(ts);
            out.push(' ');
        }
        out.push_str(text);
        if tag == "F" {
            out.push('\n');
            *partial_open = false;
        } else {
            *partial_open = true;
        }
    }
    out
}

/// Keep the last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let bytes = text.as_bytes();
    let mut seen = 0;
    let end = if text.ends_with('\n') {
        bytes.len() - 1
    } else {
        bytes.len()
    };
    for i in (0..end).rev() {
        if bytes[i] == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-01-01T00:00:01Z stdout F one
2026-01-01T00:00:02Z stderr P tw
2026-01-01T00:00:02.5Z stderr F o
2026-01-01T00:00:03Z stdout F three
";

    #[test]
    fn records_become_the_containers_output_again() {
        let mut open = false;
        assert_eq!(
            render(LOG, &LogOptions::default(), &mut open),
            "one\ntwo\nthree\n"
        );
        let opts = LogOptions {
            timestamps: true,
            ..LogOptions::default()
        };
        let mut open = false;
        assert_eq!(
            render(LOG, &opts, &mut open),
            "2026-01-01T00:00:01Z one\n2026-01-01T00:00:02Z two\n2026-01-01T00:00:03Z three\n"
        );
        let since = LogOptions {
            since: Some("2026-01-01T00:00:03Z".parse().unwrap()),
            ..LogOptions::default()
        };
        let mut open = false;
        assert_eq!(render(LOG, &since, &mut open), "three\n");
    }

    #[test]
    fn options_parse_and_tail_counts_lines() {
        let o = LogOptions::parse(
            "container=c&follow=true&tailLines=2&timestamps=true&limitBytes=10&previous=true",
        );
        assert!(o.follow && o.timestamps && o.previous);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(2), Some(10)));
        let t = LogOptions::parse("sinceTime=2026-01-01T00%3A00%3A02Z");
        assert_eq!(t.since, Some("2026-01-01T00:00:02Z".parse().unwrap()));
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail("a\nb", 1), "b");
    }

    #[test]
    fn previous_picks_the_instance_before() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0, 1, 2] {
            std::fs::write(dir.path().join(format!("{n}.log")), "").unwrap();
        }
        assert_eq!(file_for(dir.path(), false).unwrap().1, 2);
        assert_eq!(file_for(dir.path(), true).unwrap().1, 1);
    }
}
