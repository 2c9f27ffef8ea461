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

/// Does nftables work here: is `nft` installed, and does the kernel answer
/// `nft list tables`? The service proxy programs its rules through it.
///
/// # Errors
/// One line naming what is missing and how to get it.
pub fn nftables_works() -> Result<(), String> {
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
