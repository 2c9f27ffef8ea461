//! The Service strategy: DNS-1035 names, defaults (type, ports' target
//! ports), validation, and cluster IPs and node ports taken from the
//! registry's allocator (through the strategy context) on create and
//! update, given back on delete.

use k8s_openapi::api::core::v1 as corev1;
use serde_json::{Value, json};

use crate::api::catalog::Resource;
use crate::api::defaults;
use crate::api::status::FieldError;
use crate::api::table::Printer;
use crate::api::validation::{self, NameRule};
use crate::server::registry::Held;
use crate::server::registry::strategy::{Context, Strategy, Undo};
use crate::server::registry::typed::through;

pub struct Service;

impl Strategy for Service {
    fn round_trip(&self, obj: &Value) -> Option<Result<Value, String>> {
        Some(through::<corev1::Service>(obj))
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Dns1035
    }

    fn defaults(&self, obj: &mut Value) {
        defaults::service(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validation::service(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validation::service_update(old, new, errs);
    }

    fn prepare_create(&self, _ctx: &Context<'_>, _res: &Resource, obj: &mut Value) {
        obj["status"] = json!({"loadBalancer": {}});
    }

    fn allocate(
        &self,
        ctx: &Context<'_>,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Option<Undo>, Vec<FieldError>> {
        let before = old.map(Held::of);
        let now = ctx
            .allocator
            .lock()
            .expect("allocator lock")
            .assign(obj, before.as_ref())?;
        Ok(Some(Undo::new(move |ctx| {
            // Give back new allocations, keep the old ones.
            let mut allocator = ctx.allocator.lock().expect("allocator lock");
            allocator.release(&now);
            if let Some(before) = &before {
                allocator.restore(before);
            }
        })))
    }

    fn holds_allocations(&self) -> bool {
        true
    }

    fn restore(&self, ctx: &Context<'_>, obj: &Value) {
        ctx.allocator
            .lock()
            .expect("allocator lock")
            .restore(&Held::of(obj));
    }

    fn release(&self, ctx: &Context<'_>, old: &Value) {
        ctx.allocator
            .lock()
            .expect("allocator lock")
            .release(&Held::of(old));
    }

    fn printer(&self) -> Printer {
        Printer::Service
    }
}
