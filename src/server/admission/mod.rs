//! Admission at the HTTP layer: named plugins that see a write after it is
//! authorized and before the registry stores it, in a fixed order (the
//! `--enable-admission-plugins` order upstream). Each may change the
//! object (mutating) or refuse the write (validating).
//!
//! Today's chain: [`node_restriction::NodeRestriction`]. The slot after
//! the built-in plugins is where mutating and validating webhooks go (a
//! later issue). Admission that needs the stored object (service account
//! defaults, default tolerations, limits) runs inside the registry's
//! per-kind strategies.

#![forbid(unsafe_code)]

pub mod node_restriction;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::api::catalog::Resource;
use crate::api::status::ApiError;
use crate::server::auth::User;

/// What a write does, as upstream's `admission.Operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

/// A write being admitted.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub user: &'a User,
    pub operation: Operation,
    pub resource: &'a Resource,
    pub namespace: Option<&'a str>,
    /// The name in the path (none for a create).
    pub name: Option<&'a str>,
    pub subresource: Option<&'a str>,
}

/// One admission plugin.
///
/// Asynchronous so that plugins which call out (webhooks) fit the chain.
pub trait AdmissionPlugin: Send + Sync {
    /// The plugin's name, as upstream names its plugins.
    fn name(&self) -> &'static str;

    /// Admit the write of `object`, changing it if the plugin mutates.
    ///
    /// # Errors
    /// The Status the client gets when the write is refused.
    fn admit<'a>(
        &'a self,
        request: &'a Request<'a>,
        object: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>>;
}

/// The plugins, in order.
pub struct Chain {
    plugins: Vec<Box<dyn AdmissionPlugin>>,
}

impl Chain {
    pub fn new(plugins: Vec<Box<dyn AdmissionPlugin>>) -> Self {
        Self { plugins }
    }

    /// The built-in plugins, in upstream's order.
    pub fn builtin() -> Self {
        Self::new(vec![
            Box::new(node_restriction::NodeRestriction),
            // Mutating, then validating webhooks go here (a later issue).
        ])
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// Run every plugin in order; the first refusal ends the write.
    ///
    /// # Errors
    /// The refusing plugin's Status.
    pub async fn admit(&self, request: &Request<'_>, object: &mut Value) -> Result<(), ApiError> {
        for plugin in &self.plugins {
            plugin.admit(request, object).await.inspect_err(|e| {
                tracing::debug!(plugin = plugin.name(), message = %e.message, "admission refused");
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use serde_json::json;

    /// Sets a label, or refuses.
    struct Label(&'static str, bool);

    impl AdmissionPlugin for Label {
        fn name(&self) -> &'static str {
            self.0
        }

        fn admit<'a>(
            &'a self,
            _: &'a Request<'a>,
            object: &'a mut Value,
        ) -> BoxFuture<'a, Result<(), ApiError>> {
            async move {
                if !self.1 {
                    return Err(ApiError::forbidden(format!("{} says no", self.0)));
                }
                object["metadata"]["labels"][self.0] = json!("seen");
                Ok(())
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn plugins_run_in_order_and_the_first_refusal_ends_the_write() {
        let catalog = crate::api::catalog::Catalog::builtin();
        let pods = catalog.find("", "v1", "pods").unwrap();
        let user = User::service_account("default", "app");
        let request = Request {
            user: &user,
            operation: Operation::Create,
            resource: pods,
            namespace: Some("default"),
            name: None,
            subresource: None,
        };
        let chain = Chain::new(vec![
            Box::new(Label("a", true)),
            Box::new(Label("b", false)),
            Box::new(Label("c", true)),
        ]);
        assert_eq!(chain.names(), ["a", "b", "c"]);
        let mut pod = json!({"metadata": {"name": "p"}});
        let err = chain.admit(&request, &mut pod).await.unwrap_err();
        assert_eq!(err.message, "b says no");
        assert_eq!(
            pod["metadata"]["labels"],
            json!({"a": "seen"}),
            "c never ran"
        );
        assert_eq!(Chain::builtin().names(), ["NodeRestriction"]);
    }
}
