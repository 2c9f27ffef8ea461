//! `orch server`: the control plane — the state store, the Kubernetes API
//! over HTTPS, and (in later issues) the scheduler, controllers and the
//! embedded agent.

#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod auth;
mod bootstrap;
pub mod controllers;
pub mod events;
pub mod informer;
pub mod reconcile;
pub mod registry;
pub mod scheduler;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::{self, CompactionPolicy, Compactor, SqliteConfig, Store};

/// The Kubernetes version the API reports (semver, as kubectl requires).
pub const KUBERNETES_VERSION: &str = concat!("v1.33.0+orch", env!("CARGO_PKG_VERSION"));

/// What `orch server` needs to run, already validated by the CLI.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub compaction: CompactionPolicy,
    /// Where the API listens (default 0.0.0.0:6443).
    pub listen: SocketAddr,
    /// The address agents and the `kubernetes` Service point at.
    pub advertise_address: IpAddr,
    /// Extra names and IPs for the serving certificate.
    pub tls_sans: Vec<String>,
    /// Also write the admin kubeconfig here (default /etc/orch/orch.yaml).
    pub write_kubeconfig: Option<PathBuf>,
    /// The join token's secret on first start (`--token`).
    pub token: Option<String>,
    pub service_ranges: registry::ServiceRanges,
    pub admission: admission::Settings,
    pub controllers: controllers::Config,
    /// Timeouts and the unauthenticated-connection cap of the API port.
    pub connection_limits: api::Limits,
    /// The audiences service account tokens must name to authenticate
    /// (`--api-audiences`; default the issuer).
    pub api_audiences: auth::serviceaccount::Audiences,
    /// Requests without credentials are `system:anonymous` (else 401).
    pub anonymous_auth: bool,
}

impl Config {
    /// A config with the defaults, for `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            compaction: CompactionPolicy::default(),
            listen: SocketAddr::from(([0, 0, 0, 0], 6443)),
            advertise_address: IpAddr::from([127, 0, 0, 1]),
            tls_sans: Vec::new(),
            write_kubeconfig: Some(PathBuf::from("/etc/orch/orch.yaml")),
            token: None,
            service_ranges: registry::ServiceRanges::default(),
            admission: admission::Settings::default(),
            controllers: controllers::Config::default(),
            connection_limits: api::Limits::default(),
            api_audiences: auth::serviceaccount::Audiences::default(),
            anonymous_auth: true,
        }
    }

    /// `<data-dir>/server/db/state.db`
    pub fn store_path(&self) -> PathBuf {
        store_path(&self.data_dir)
    }

    /// The names the serving certificate covers.
    fn serving_names(&self) -> Vec<String> {
        let mut names: Vec<String> = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
            self.service_ranges.nth(1).to_string(),
        ];
        if let Some(host) = hostname() {
            names.push(host);
        }
        names.push(self.advertise_address.to_string());
        if !self.listen.ip().is_unspecified() {
            names.push(self.listen.ip().to_string());
        }
        names.extend(self.tls_sans.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty())
}

/// Where the store lives under a data dir.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("db").join("state.db")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Auth(#[from] auth::Error),
    #[error(
        "cannot listen on {addr}: {err}; is another server using the port? pass --https-listen-port or --bind-address"
    )]
    Listen {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("cannot prepare the API: {0}")]
    Api(crate::api::status::ApiError),
}

/// Run the server until `shutdown` resolves.
///
/// # Errors
/// Fails when the store cannot be opened, the certificates cannot be
/// created, or the port is taken; the message names the file or port and
/// what to do.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    run_with(config, shutdown, None).await
}

/// [`run`], sending the URL agents on this machine use to `ready` once the
/// API serves (how `orch server` starts its embedded agent).
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: Option<tokio::sync::oneshot::Sender<String>>,
) -> Result<(), Error> {
    let path = config.store_path();
    // Opening checks the file's integrity: file IO, so off the runtime.
    let store = tokio::task::spawn_blocking(move || Store::open_sqlite(SqliteConfig::new(path)))
        .await
        .map_err(|_| store::Error::Closed)??;
    let compactor = Compactor::spawn(store.clone(), config.compaction);

    let tls_dir = config.data_dir.join("server").join("tls");
    let names = config.serving_names();
    let pki = tokio::task::spawn_blocking(move || auth::Pki::load_or_create(&tls_dir, &names))
        .await
        .map_err(|_| store::Error::Closed)??;
    let tls = Arc::new(auth::server_tls_config(&pki)?);

    let registry = registry::Registry::new(
        store.clone(),
        config.service_ranges,
        admission::Chain::builtin(config.admission),
    )
    .await
    .map_err(Error::Api)?;
    let sa_key = config
        .data_dir
        .join("server")
        .join("tls")
        .join("service-account.key");
    let service_accounts = Arc::new(
        tokio::task::spawn_blocking(move || auth::serviceaccount::Signer::load_or_create(&sa_key))
            .await
            .map_err(|_| store::Error::Closed)??,
    );
    let (control, mut control_tasks) = controllers::start(
        registry.clone(),
        controllers::Config {
            root_ca: pki.ca_cert.clone(),
            service_accounts: Some(service_accounts.clone()),
            pki: Some(Arc::new(pki.clone())),
            ..config.controllers.clone()
        },
    )
    .await;
    // Synced by now: admission reads namespaces from it, not the store.
    registry
        .admission()
        .use_namespace_cache(control.informers.namespaces.clone());
    scheduler::start(
        Arc::new(scheduler::Context {
            registry: control.registry.clone(),
            pods: control.informers.pods.clone(),
            nodes: control.informers.nodes.clone(),
            events: control.events.clone(),
        }),
        &mut control_tasks,
    );

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|err| Error::Listen {
            addr: config.listen,
            err,
        })?;
    let local = listener.local_addr().map_err(|err| Error::Listen {
        addr: config.listen,
        err,
    })?;
    // The `kubernetes` Service's endpoint is the port really listened on
    // (`--https-listen-port 0` picks one).
    bootstrap::ensure(&registry, config.advertise_address, local.port())
        .await
        .map_err(Error::Api)?;
    // The default roles and bindings, before anyone is authorized by them.
    for (plural, rev) in auth::policy::reconcile(&registry)
        .await
        .map_err(Error::Api)?
    {
        let informers = &control.informers;
        let informer = match plural {
            "clusterroles" => &informers.clusterroles,
            "roles" => &informers.roles,
            "clusterrolebindings" => &informers.clusterrolebindings,
            _ => &informers.rolebindings,
        };
        informer.wait_for(store::Revision(rev)).await;
    }
    let host = if config.listen.ip().is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        config.listen.ip()
    };
    let server_url = format!("https://{}", SocketAddr::new(host, local.port()));
    let kubeconfig = pki.admin_kubeconfig(&server_url);
    auth::pki::write_kubeconfig(
        &config.data_dir.join("server").join("admin.kubeconfig"),
        &kubeconfig,
    )?;
    if let Some(path) = &config.write_kubeconfig {
        auth::pki::write_kubeconfig(path, &kubeconfig)?;
    }

    let token_path = config.data_dir.join("server").join("token");
    let join_token = auth::join_token(&token_path, &pki.ca_cert, config.token.as_deref())?;
    let x509 = Arc::new(auth::authn::x509::X509::new(auth::client_verifier(&pki)?));
    let authenticators = auth::authn::Chain::new(vec![
        Box::new(x509.clone()),
        Box::new(
            auth::authn::token::Tokens::with_admin(&pki.admin_token).with_join_token(&join_token),
        ),
        Box::new(auth::authn::service_account::ServiceAccounts::new(
            service_accounts.clone(),
            registry.clone(),
            config.api_audiences.clone(),
        )),
        Box::new(auth::authn::bootstrap::BootstrapTokens::new(
            registry.clone(),
        )),
    ]);
    let rbac = auth::authz::rbac::Rbac::start(auth::authz::rbac::Sources {
        roles: control.informers.roles.clone(),
        cluster_roles: control.informers.clusterroles.clone(),
        role_bindings: control.informers.rolebindings.clone(),
        cluster_role_bindings: control.informers.clusterrolebindings.clone(),
    });
    registry.admission().use_rbac(rbac.clone());
    let authorizers = Arc::new(auth::authz::Chain::new(vec![
        Box::new(auth::authz::masters::Masters),
        Box::new(auth::authz::node::Node::new(
            registry.clone(),
            control.informers.pods.clone(),
            api::route::TUNNEL_PATH,
        )),
        Box::new(rbac.clone()),
    ]));
    // Approving nodes' certificates asks the same authorizers.
    controllers::csrapproving::start(control.clone(), authorizers.clone(), &mut control_tasks);
    let api = Arc::new(api::ApiServer {
        registry,
        ca_pem: pki.ca_cert.clone(),
        tunnels: Arc::default(),
        service_accounts,
        api_audiences: config.api_audiences.clone(),
        pki: Arc::new(pki.clone()),
        x509,
        authenticators,
        anonymous_auth: config.anonymous_auth,
        authorizers,
        server_address: format!("{}:{}", config.advertise_address, local.port()),
        git_commit: env!("ORCH_GIT_COMMIT"),
    });
    let serving = tokio::spawn(api::serve(
        listener,
        tls,
        api,
        config.connection_limits.clone(),
    ));
    tracing::info!(
        data_dir = %config.data_dir.display(),
        listen = %local,
        kubeconfig = %config.write_kubeconfig.as_deref().unwrap_or(&config.data_dir.join("server/admin.kubeconfig")).display(),
        revision = %store.current_revision(),
        "orch server ready"
    );
    if let Some(tx) = ready {
        let _ = tx.send(server_url.clone());
    }
    shutdown.await;
    tracing::info!("orch server shutting down");
    serving.abort();
    let _ = serving.await;
    control_tasks.shutdown().await;
    compactor.abort();
    let _ = compactor.await;
    // Dropping the last handle flushes queued writes and closes the file.
    tokio::task::spawn_blocking(move || drop(store))
        .await
        .map_err(|_| store::Error::Closed)?;
    Ok(())
}
