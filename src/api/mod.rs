//! Kubernetes API knowledge shared by server and agent: the resource catalog,
//! selectors, patches, `Status` errors and table columns. Pure logic, no IO.
//!
//! Empty until the API server lands (issue #3).

#![forbid(unsafe_code)]
