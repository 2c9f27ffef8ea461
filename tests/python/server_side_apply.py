"""Server-side apply through the official Python client's dynamic client,
checked against what a real API server answers.

Usage: server_side_apply.py KUBECONFIG
"""
import json
import sys

from kubernetes import client, config, dynamic
from kubernetes.client.rest import ApiException


def expect_error(status, fn):
    try:
        fn()
    except ApiException as e:
        assert e.status == status, (e.status, e.body)
        return json.loads(e.body)
    raise AssertionError(f"expected {status}")


def main(kubeconfig):
    api_client = config.new_client_from_config(kubeconfig)
    dyn = dynamic.DynamicClient(api_client)
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py-ssa"}, "data": {"a": "1"}}

    # Apply creates, as the manager named.
    made = dyn.server_side_apply(cms, body=cm, namespace="default", field_manager="py-one")
    entries = made.to_dict()["metadata"]["managedFields"]
    assert [(e["manager"], e["operation"]) for e in entries] == [("py-one", "Apply")], entries
    assert entries[0]["fieldsV1"] == {"f:data": {"f:a": {}}}, entries

    # A second manager changing the field conflicts; the 409 names the field.
    other = dict(cm, data={"a": "2"})
    body = expect_error(409, lambda: dyn.server_side_apply(cms, body=other, namespace="default", field_manager="py-two"))
    assert body["reason"] == "Conflict", body
    assert body["message"] == 'Apply failed with 1 conflict: conflict with "py-one": .data.a', body
    assert body["details"]["causes"] == [
        {"reason": "FieldManagerConflict", "message": 'conflict with "py-one"', "field": ".data.a"}
    ], body

    # Forcing takes the field.
    forced = dyn.server_side_apply(cms, body=other, namespace="default", field_manager="py-two", force_conflicts=True)
    assert forced.data.a == "2"
    managers = [e["manager"] for e in forced.to_dict()["metadata"]["managedFields"]]
    assert managers == ["py-two"], managers

    # Dry run stores nothing.
    dry = dict(cm, data={"a": "3"})
    dyn.server_side_apply(cms, body=dry, namespace="default", field_manager="py-two", dry_run="All")
    assert cms.get(name="py-ssa", namespace="default").data.a == "2"

    # Apply needs a manager; force is for apply only.
    core = client.CoreV1Api(api_client)
    body = expect_error(422, lambda: dyn.server_side_apply(cms, body=cm, namespace="default"))
    assert body["message"] == 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch', body
    body = expect_error(
        422,
        lambda: core.patch_namespaced_config_map("py-ssa", "default", {"data": {"b": "1"}}, force=True),
    )
    assert body["details"]["causes"][0]["field"] == "force", body

    # Status through its subresource, spec through the resource.
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "py-ssa"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "py-ssa"}},
            "template": {
                "metadata": {"labels": {"app": "py-ssa"}},
                "spec": {"containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80}]}]},
            },
        },
    }
    made = dyn.server_side_apply(deployments, body=dep, namespace="default", field_manager="py-deployer")
    mine = [e for e in made.to_dict()["metadata"]["managedFields"] if e["manager"] == "py-deployer"][0]
    ports = mine["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"c"}']["f:ports"]
    assert ports == {'k:{"containerPort":80,"protocol":"TCP"}': {".": {}, "f:containerPort": {}}}, ports
    deployments.delete(name="py-ssa", namespace="default")
    cms.delete(name="py-ssa", namespace="default")
    print("python server-side apply: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
