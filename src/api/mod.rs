//! Kubernetes API knowledge shared by server and agent: the resource catalog,
//! selectors, patches, validation, defaulting, `Status` errors, table
//! columns, cron schedules and object metadata. Pure logic on JSON values: no IO, no tokio.

#![forbid(unsafe_code)]

pub mod catalog;
pub mod cel;
pub mod components;
pub mod cron;
pub mod custom;
pub mod defaults;
pub mod duplicates;
pub mod join;
pub mod managed;
pub mod meta;
pub mod names;
pub mod node_labels;
pub mod patch;
pub mod placement;
pub mod podrefs;
pub mod proto;
pub mod quantity;
pub mod query;
pub mod rbac;
pub mod remotecommand;
pub mod rules;
pub mod schema;
pub mod selector;
pub mod spdy;
pub mod status;
pub mod table;
pub mod validation;
