"""The official Python client against orch: create, list, watch, patch,
delete. Run by tests/python_client.rs with the server's kubeconfig."""
import json
import sys
import time
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert "py" in names and "kube-system" in names, names

    cm = core.create_namespaced_config_map(
        "py", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c1", labels={"app": "py"}), data={"k": "v"})
    )
    assert cm.metadata.uid and cm.metadata.resource_version, cm.metadata
    listed = core.list_namespaced_config_map("py", label_selector="app=py")
    assert [c.metadata.name for c in listed.items] == ["c1"], listed

    # Watch from the list's resourceVersion, then change things.
    events = []
    w = watch.Watch()

    def watcher():
        for ev in w.stream(core.list_namespaced_config_map, "py",
                           resource_version=listed.metadata.resource_version, timeout_seconds=20):
            events.append((ev["type"], ev["object"].metadata.name, dict(ev["object"].data or {})))
            if len(events) >= 3:
                w.stop()

    t = threading.Thread(target=watcher)
    t.start()
    core.patch_namespaced_config_map("c1", "py", {"data": {"k": "patched"}})
    core.create_namespaced_config_map("py", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c2")))
    core.delete_namespaced_config_map("c2", "py")
    t.join(25)
    assert [(e[0], e[1]) for e in events] == [("MODIFIED", "c1"), ("ADDED", "c2"), ("DELETED", "c2")], events
    assert events[0][2] == {"k": "patched"}, events

    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1.36")]),
            ),
        ),
    )
    apps.create_namespaced_deployment("py", dep)
    patched = apps.patch_namespaced_deployment("web", "py", {"spec": {"replicas": 3}})
    assert patched.spec.replicas == 3 and patched.metadata.generation == 2, patched
    scale = apps.read_namespaced_deployment_scale("web", "py")
    assert scale.spec.replicas == 3, scale

    try:
        core.read_namespaced_config_map("missing", "py")
        raise AssertionError("expected 404")
    except ApiException as e:
        assert e.status == 404, e

    try:
        stale = core.read_namespaced_config_map("c1", "py")
        stale.metadata.resource_version = "1"
        core.replace_namespaced_config_map("c1", "py", stale)
        raise AssertionError("expected 409")
    except ApiException as e:
        assert e.status == 409, e

    apps.delete_namespaced_deployment("web", "py")
    core.delete_namespaced_config_map("c1", "py")
    # Every namespace keeps the cluster CA as kube-root-ca.crt.
    remaining = [
        c.metadata.name
        for c in core.list_namespaced_config_map("py").items
        if c.metadata.name != "kube-root-ca.crt"
    ]
    assert remaining == [], remaining
    # RBAC through the review APIs: what a webhook or aggregated API
    # server asks (issue #22).
    authz = client.AuthorizationV1Api()
    rbac = client.RbacAuthorizationV1Api()
    rbac.create_namespaced_role_binding(
        "py",
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="jane-view"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"),
            subjects=[client.RbacV1Subject(kind="User", name="jane", api_group="rbac.authorization.k8s.io")],
        ),
    )

    def may(user, verb, resource, ns, groups=None):
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=groups,
                resource_attributes=client.V1ResourceAttributes(verb=verb, resource=resource, namespace=ns),
            )
        )
        return authz.create_subject_access_review(review).status

    deadline = time.time() + 5
    while not may("jane", "list", "pods", "py").allowed:
        assert time.time() < deadline, "the binding grants jane view in py"
        time.sleep(0.05)
    allowed = may("jane", "list", "pods", "py")
    assert "RoleBinding \"jane-view/py\" of ClusterRole \"view\"" in allowed.reason, allowed
    assert not may("jane", "list", "pods", "default").allowed
    assert not may("jane", "delete", "pods", "py").allowed
    assert not may("jane", "get", "secrets", "py").allowed
    assert may("root", "delete", "nodes", "", groups=["system:masters"]).allowed
    local = authz.create_namespaced_local_subject_access_review(
        "py",
        client.V1LocalSubjectAccessReview(
            metadata=client.V1ObjectMeta(namespace="py"),
            spec=client.V1SubjectAccessReviewSpec(
                user="jane",
                resource_attributes=client.V1ResourceAttributes(verb="watch", resource="configmaps", namespace="py"),
            ),
        ),
    )
    assert local.status.allowed, local
    try:
        authz.create_subject_access_review(
            client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    resource_attributes=client.V1ResourceAttributes(verb="get", resource="pods")
                )
            )
        )
        raise AssertionError("expected 422")
    except ApiException as e:
        causes = json.loads(e.body)["details"]["causes"]
        assert e.status == 422 and causes == [
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: \"\": at least one of user or group must be specified",
                "field": "spec.user",
            }
        ], e.body
    rbac.delete_namespaced_role_binding("jane-view", "py")
    print("python client: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
