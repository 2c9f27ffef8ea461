//! Kubernetes resource quantities.

/// Parse a Kubernetes quantity ("100m", "1.5", "64Mi", "1G", "2e3") into
/// base units, scaled by `scale` (1000 for CPU millicores).
pub fn parse_quantity(q: &str, scale: f64) -> Option<i64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (num, mult) = suffixes
        .iter()
        .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
        .or_else(|| q.strip_suffix('P').map(|n| (n, 1e15)))
        .or_else(|| {
            q.strip_suffix('E')
                .filter(|n| !n.contains('e'))
                .map(|n| (n, 1e18))
        })
        .unwrap_or((q, 1.0));
    let value: f64 = num.parse().ok()?;
    Some((value * mult * scale).ceil() as i64)
}
