//! Pod networking (netns, veth, bridge, IPAM), the cross-node overlay, the
//! nftables service proxy and cluster DNS.

pub mod dns;
pub mod ipam;
pub mod netlink;
pub mod overlay;
pub mod pod;
pub mod proxy;
#[doc(hidden)]
pub mod testns;

/// Does nftables work here: is `nft` installed, 1.0.1 or newer (the JSON
/// the proxy falls back on), and does the kernel answer `nft list
/// tables`? The service proxy programs its rules through it.
///
/// # Errors
/// One line naming what is missing and how to get it.
pub fn nftables_works() -> Result<(), String> {
    if let Ok(out) = std::process::Command::new("nft")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(version) = nft_version(&text)
            && version < (1, 0, 1)
        {
            return Err(format!(
                "nft {}.{}.{} is too old (orch needs nftables 1.0.1 or newer): upgrade the nftables package",
                version.0, version.1, version.2
            ));
        }
    }
    match std::process::Command::new("nft")
        .args(["list", "tables"])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(
            "nft is not installed (the service proxy programs nftables with it): apt-get install nftables, or your distribution's nftables package".into(),
        ),
        Err(e) => Err(format!("cannot run nft: {e}")),
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "nftables does not work on this kernel (nft list tables: {}): load it with modprobe nf_tables, or use a kernel with CONFIG_NF_TABLES",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("no output")
        )),
    }
}

/// The version in `nft --version`'s output (`nftables v1.0.6 (Lester
/// Gooch #5)`).
fn nft_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn nft_versions_are_read_from_its_banner() {
        assert_eq!(
            super::nft_version("nftables v1.0.6 (Lester Gooch #5)\n"),
            Some((1, 0, 6))
        );
        assert_eq!(
            super::nft_version("nftables v0.9.8 (E.D.S.)"),
            Some((0, 9, 8))
        );
        assert_eq!(super::nft_version("nftables v1.1"), Some((1, 1, 0)));
        assert!(super::nft_version("nftables v0.9.8").unwrap() < (1, 0, 1));
        assert_eq!(super::nft_version("something else"), None);
    }
}
