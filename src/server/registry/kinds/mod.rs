//! The strategies of the built-in kinds, one file per kind or per small
//! group of related kinds, and the table that maps each catalog entry's
//! group and kind to its strategy. Adding a kind is adding a strategy here
//! and an entry in `api::catalog`.

pub mod apiextensions;
mod apps;
mod batch;
pub mod certificates;
mod core;
mod namespace;
mod pod;
mod rbac;
mod replicationcontroller;
mod service;

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::strategy::Strategy;
use crate::api::table::Printer;

/// A kind whose only particular is its typed schema and its printer.
pub struct Typed<T> {
    printer: Printer,
    kind: PhantomData<fn() -> T>,
}

impl<T> Typed<T> {
    pub fn new(printer: Printer) -> Self {
        Self {
            printer,
            kind: PhantomData,
        }
    }
}

impl<T: DeserializeOwned + Serialize> Strategy for Typed<T> {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(super::typed::through::<T>(obj))
    }

    fn printer(&self) -> Printer {
        self.printer
    }
}

/// Every built-in kind's strategy, as (group, kind, strategy).
pub fn builtin() -> Vec<(&'static str, &'static str, Arc<dyn Strategy>)> {
    use k8s_openapi::api::{coordination, core::v1 as corev1, discovery, events};
    vec![
        ("", "Namespace", Arc::new(namespace::Namespace)),
        ("", "Node", Arc::new(core::Node)),
        ("", "Pod", Arc::new(pod::Pod)),
        ("", "Service", Arc::new(service::Service)),
        (
            "",
            "Endpoints",
            Arc::new(Typed::<corev1::Endpoints>::new(Printer::Endpoints)),
        ),
        ("", "ConfigMap", Arc::new(core::ConfigMap)),
        ("", "Secret", Arc::new(core::Secret)),
        (
            "certificates.k8s.io",
            "CertificateSigningRequest",
            Arc::new(certificates::CertificateSigningRequest),
        ),
        (
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            Arc::new(apiextensions::CustomResourceDefinition),
        ),
        (
            "",
            "ServiceAccount",
            Arc::new(Typed::<corev1::ServiceAccount>::new(
                Printer::ServiceAccount,
            )),
        ),
        (
            "",
            "Event",
            Arc::new(Typed::<corev1::Event>::new(Printer::Event)),
        ),
        (
            "",
            "ReplicationController",
            Arc::new(replicationcontroller::ReplicationController),
        ),
        (
            "coordination.k8s.io",
            "Lease",
            Arc::new(Typed::<coordination::v1::Lease>::new(Printer::Lease)),
        ),
        ("apps", "Deployment", Arc::new(apps::Deployment)),
        ("apps", "ReplicaSet", Arc::new(apps::ReplicaSet)),
        ("apps", "DaemonSet", Arc::new(apps::DaemonSet)),
        ("apps", "StatefulSet", Arc::new(apps::StatefulSet)),
        (
            "apps",
            "ControllerRevision",
            Arc::new(
                Typed::<k8s_openapi::api::apps::v1::ControllerRevision>::new(
                    Printer::ControllerRevision,
                ),
            ),
        ),
        ("batch", "Job", Arc::new(batch::Job)),
        ("batch", "CronJob", Arc::new(batch::CronJob)),
        (
            "discovery.k8s.io",
            "EndpointSlice",
            Arc::new(Typed::<discovery::v1::EndpointSlice>::new(
                Printer::EndpointSlice,
            )),
        ),
        (
            "events.k8s.io",
            "Event",
            Arc::new(Typed::<events::v1::Event>::new(Printer::Event)),
        ),
        ("rbac.authorization.k8s.io", "Role", Arc::new(rbac::role())),
        (
            "rbac.authorization.k8s.io",
            "ClusterRole",
            Arc::new(rbac::cluster_role()),
        ),
        (
            "rbac.authorization.k8s.io",
            "RoleBinding",
            Arc::new(rbac::role_binding()),
        ),
        (
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            Arc::new(rbac::cluster_role_binding()),
        ),
    ]
}

#[cfg(test)]
mod tests;
