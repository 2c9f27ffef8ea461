//! `orch kubeconfig create --user NAME [--group G]... [--ttl D]`: a
//! kubeconfig for a person, with a client certificate from the cluster CA
//! (CN the user, O each group), printed on stdout. Run on the server
//! machine; what the user may do is RBAC's business (bind them to a role).

use std::path::Path;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: KubeconfigCommand,
    #[command(flatten)]
    pub data: super::GlobalDataDirArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum KubeconfigCommand {
    /// Print a kubeconfig for USER (in each GROUP) with a new client
    /// certificate signed by the cluster CA.
    Create {
        /// The user name (the certificate's CN).
        #[arg(long, value_name = "NAME")]
        user: String,
        /// A group (the certificate's O); repeat for more.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// How long the certificate is good for: a number and s, m, h, d
        /// or y (1y = 365d).
        #[arg(long, value_name = "DURATION", default_value = "1y", value_parser = parse_ttl)]
        ttl: i64,
        /// The API server URL to put in it [default: the one in the
        /// server's admin kubeconfig].
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
}

/// Seconds in `24h`, `30d`, `1y` and the like.
fn parse_ttl(s: &str) -> Result<i64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 24h, 30d or 1y"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "y" => 365 * 86_400,
        _ => return Err(format!("{s:?} is not a duration; use e.g. 24h, 30d or 1y")),
    };
    let secs = n.saturating_mul(unit);
    if secs < 600 {
        return Err("--ttl must be at least 10m".into());
    }
    Ok(secs)
}

/// The `server:` URL of the server's admin kubeconfig.
fn server_url(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("server").join("admin.kubeconfig");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; run this on the server machine (with its --data-dir), or pass --server",
            path.display()
        )
    })?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_owned))
        .with_context(|| format!("{} names no server; pass --server", path.display()))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let KubeconfigCommand::Create {
        user,
        groups,
        ttl,
        server,
    } = args.command;
    if user.trim().is_empty() {
        anyhow::bail!("--user must name someone");
    }
    let data_dir = &args.data.data_dir;
    let pki = crate::server::auth::Pki::existing_ca(&data_dir.join("server").join("tls"))?;
    let server = match server {
        Some(s) => s,
        None => server_url(data_dir)?,
    };
    let (cert, key) = pki.issue_client(&user, &groups, ttl)?;
    print!(
        "{}",
        crate::server::auth::pki::kubeconfig(&server, &pki.ca_cert, &user, &cert, &key)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_ttl("24h"), Ok(86_400));
        assert_eq!(parse_ttl("30d"), Ok(30 * 86_400));
        assert_eq!(parse_ttl("1y"), Ok(365 * 86_400));
        assert_eq!(parse_ttl("10m"), Ok(600));
        assert!(parse_ttl("5m").unwrap_err().contains("at least 10m"));
        assert!(parse_ttl("soon").unwrap_err().contains("e.g. 24h"));
        assert!(parse_ttl("3w").is_err());
    }
}
