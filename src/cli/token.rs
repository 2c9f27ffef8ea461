//! `orch token create|list|delete`: extra join tokens for agents, which
//! expire (kubeadm's bootstrap tokens, in k3s's `K10…` form). They only
//! let an agent get its node certificate; the server's own token stays in
//! `<data-dir>/server/token`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::api::join;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: TokenCommand,
    #[command(flatten)]
    pub data: super::GlobalDataDirArgs,
    /// (client) Admin kubeconfig [default: <data-dir>/server/admin.kubeconfig].
    #[arg(long, global = true, env = "ORCH_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a join token for agents and print it.
    Create {
        /// How long it works: 24h, 90m, 1h30m, 2d, or 0 for no expiry.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What it is for (shown by `orch token list`).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the extra join tokens: ID, time left, description.
    #[command(alias = "ls")]
    List,
    /// Delete join tokens by ID (agents that joined with them keep their
    /// certificates).
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Refuse a bad --ttl before anything else is read or asked.
    if let TokenCommand::Create { ttl, .. } = &args.command {
        join::parse_ttl(ttl).map_err(anyhow::Error::msg)?;
    }
    let kubeconfig = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| args.data.data_dir.join("server").join("admin.kubeconfig"));
    let text = std::fs::read_to_string(&kubeconfig).with_context(|| {
        format!(
            "cannot read the admin kubeconfig {}; run this on the server (as root) or pass --kubeconfig",
            kubeconfig.display()
        )
    })?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async move {
            let parsed = kube::config::Kubeconfig::from_yaml(&text)
                .with_context(|| format!("{} is not a kubeconfig", kubeconfig.display()))?;
            let ca_pem = ca_of(&parsed).with_context(|| {
                format!(
                    "{} names no certificate-authority-data",
                    kubeconfig.display()
                )
            })?;
            let config = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
                .await
                .context("the kubeconfig")?;
            let client = kube::Client::try_from(config).context("the API client")?;
            let secrets: Api<Secret> = Api::namespaced(client, "kube-system");
            match args.command {
                TokenCommand::Create { ttl, description } => {
                    create(&secrets, &ca_pem, &ttl, &description).await
                }
                TokenCommand::List => list(&secrets).await,
                TokenCommand::Delete { ids } => delete(&secrets, &ids).await,
            }
        })
}

/// The CA PEM of the kubeconfig's current cluster.
fn ca_of(kc: &kube::config::Kubeconfig) -> Option<String> {
    use base64::Engine;
    let context = kc.current_context.as_deref()?;
    let cluster = kc
        .contexts
        .iter()
        .find(|c| c.name == context)?
        .context
        .as_ref()?
        .cluster
        .clone();
    let data = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster)?
        .cluster
        .as_ref()?
        .certificate_authority_data
        .clone()?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()?;
    String::from_utf8(pem).ok()
}

async fn create(
    secrets: &Api<Secret>,
    ca_pem: &str,
    ttl: &str,
    description: &str,
) -> anyhow::Result<()> {
    let ttl = join::parse_ttl(ttl).map_err(anyhow::Error::msg)?;
    let mut random = [0u8; 22];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
    let (id, secret) = join::new_bootstrap(&random);
    let mut data: BTreeMap<String, ByteString> = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
    };
    put("token-id", &id);
    put("token-secret", &secret);
    put("usage-bootstrap-authentication", "true");
    put("description", description);
    if let Some(secs) = ttl {
        let expiry = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(secs as i64))
            .context("--ttl is too long")?;
        put(
            "expiration",
            &expiry.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
    }
    let object = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(join::bootstrap_secret_name(&id)),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some(join::BOOTSTRAP_TYPE.into()),
        data: Some(data),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &object)
        .await
        .context("creating the token's Secret")?;
    println!("K10{}::{id}.{secret}", join::ca_hash(ca_pem));
    Ok(())
}

async fn list(secrets: &Api<Secret>) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now();
    let all = secrets
        .list(&ListParams::default())
        .await
        .context("listing tokens")?;
    println!("{:<8} {:<10} {:<22} DESCRIPTION", "ID", "TTL", "EXPIRES");
    for s in all
        .items
        .into_iter()
        .filter(|s| s.type_.as_deref() == Some(join::BOOTSTRAP_TYPE))
    {
        let data = s.data.unwrap_or_default();
        let field = |k: &str| {
            data.get(k)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default()
        };
        let expires = field("expiration");
        let ttl = match expires.parse::<jiff::Timestamp>() {
            Ok(t) if t <= now => "expired".to_owned(),
            Ok(t) => human((t.as_second() - now.as_second()).max(0)),
            Err(_) => "<forever>".to_owned(),
        };
        println!(
            "{:<8} {:<10} {:<22} {}",
            field("token-id"),
            ttl,
            if expires.is_empty() {
                "<never>"
            } else {
                &expires
            },
            field("description")
        );
    }
    Ok(())
}

/// `1d2h`, `3h`, `59m`, `12s`.
fn human(secs: i64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, _) => format!("{h}h"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

async fn delete(secrets: &Api<Secret>, ids: &[String]) -> anyhow::Result<()> {
    for id in ids {
        match secrets
            .delete(&join::bootstrap_secret_name(id), &DeleteParams::default())
            .await
        {
            Ok(_) => println!("token {id} deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                anyhow::bail!("no token with ID {id:?}; see `orch token list`")
            }
            Err(e) => return Err(e).with_context(|| format!("deleting token {id}")),
        }
    }
    Ok(())
}
