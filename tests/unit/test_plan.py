"""The run's plan (plan/run.py): decided from the node's state and the settings before the first
operation is added, it is what the run does — the dry run (pyinfra checking each operation for a
change as it is added) and the real run (each operation's commands once all are added) read it
alike, and so does the line the run prints."""

import hashlib

import pytest

from containerd_deploy.data import artifacts
from containerd_deploy.deploy.images import IMPORT_OPERATION
from containerd_deploy.facts.node import DistroPackage, NodeState
from containerd_deploy.plan.run import NAMES, Plan, plan_removal, plan_run
from containerd_deploy.remote.manifest import Manifest

from .flow import converged, drifted, fresh, no_fetch, prepare, settings_for

CONFIG = "/etc/containerd/config.toml"
UNIT = "/etc/systemd/system/containerd.service"
DROPIN = "/etc/systemd/system/containerd.service.d/http-proxy.conf"
MIRROR = {"containerd_registries": {"docker.io": {"mirrors": [{"host": "https://mirror.internal"}]}}}
HOSTS = "/etc/containerd/certs.d/docker.io/hosts.toml"


def upgraded(node: NodeState) -> NodeState:
    """The node running an older containerd, installed by this deploy."""
    manifest = node.manifests["containerd"]
    old = Manifest(
        {**manifest.fields, "version": "1.7.0", "sha256": "0" * 64}, manifest.files, manifest.actual
    )
    return drifted(
        node, manifests={**node.manifests, "containerd": old}, ctr_client="1.7.0", ctr_server="1.7.0"
    )


def stopped(node: NodeState) -> NodeState:
    return drifted(node, service={**node.service, "ActiveState": "inactive", "MainPID": "0"})


# (case, data, the node from the converged one (None: fresh), the plan's lines)
WANTED = artifacts.resolve(settings_for(), "amd64", published=no_fetch)
VERSION, RUNC = WANTED["containerd"].version, WANTED["runc"].version
CONFIG_DRIFT = {"containerd_max_container_log_line_size": 32768}
KEEP = "keep the running release, to put back if the restarted one fails"
DROP = "drop the release kept for a rollback"
NO_RESTART = "no restart (nothing containerd loads at start changes)"
FETCHED = "(fetched by the node, sha256 verified)"
PULLED = "(pulled first if the node lacks it)"
VERIFY_RUN = f"verify containerd, then run a container from registry.k8s.io/pause:3.10 {PULLED}"
# A config from the new release's defaults: the release's own sandbox image (containerd 2.2's).
VERIFY_NEW = f"verify containerd, then run a container from registry.k8s.io/pause:3.10.1 {PULLED}"
VERIFY_ONLY = "verify the running containerd (no container: this run changes nothing)"
HOOKS_RUN = "run containerd_restart_hook_before and containerd_restart_hook_after on the controller around the restart"
HOOKS = {
    "containerd_restart_hook_before": ["kubectl", "drain", "{host}"],
    "containerd_restart_hook_after": ["kubectl", "uncordon", "{host}"],
}
CASES = [
    ("converged", {}, lambda node: node, ["no change", VERIFY_ONLY]),
    ("converged, with hooks", HOOKS, lambda node: node, ["no change", VERIFY_ONLY]),
    (
        "fresh",
        {},
        None,
        [
            f"install containerd {VERSION}, runc {RUNC} {FETCHED}",
            f"write {CONFIG}, {UNIT} (config.toml from the new containerd's defaults)",
            "reload systemd units",
            f"start containerd (containerd {VERSION} installed; runc {RUNC} installed; {UNIT} changed)",
            "enable containerd",
            VERIFY_NEW,
        ],
    ),
    (
        "a changed setting, with hooks",
        {**CONFIG_DRIFT, **HOOKS},
        lambda node: node,
        [
            f"write {CONFIG}",
            KEEP,
            f"restart the running containerd ({CONFIG} changed)",
            HOOKS_RUN,
            DROP,
            VERIFY_RUN,
        ],
    ),
    (
        "an upgrade, no rollback",
        {"containerd_rollback": False},
        upgraded,
        [
            f"install containerd 1.7.0 → {VERSION} {FETCHED}",
            f"restart the running containerd (containerd {VERSION} installed)",
            VERIFY_RUN,
        ],
    ),
    (
        "an upgrade from defaults",
        {"containerd_config_base": "default"},
        upgraded,
        [
            f"install containerd 1.7.0 → {VERSION} {FETCHED}",
            f"write {CONFIG} (config.toml from the new containerd's defaults)",
            KEEP,
            f"restart the running containerd (containerd {VERSION} installed)",
            DROP,
            VERIFY_NEW,
        ],
    ),
    (
        "a stale daemon",
        {},
        lambda node: drifted(node, exe="/usr/local/bin/containerd (deleted)"),
        [KEEP, "restart the running containerd (it is older than what is on disk)", DROP, VERIFY_RUN],
    ),
    ("stopped", {}, stopped, ["start containerd", VERIFY_RUN]),
    (
        "stopped, with a changed setting",
        CONFIG_DRIFT,
        stopped,
        [f"write {CONFIG}", f"start containerd ({CONFIG} changed)", VERIFY_RUN],
    ),
    (
        "a pending reload",
        {},
        lambda node: drifted(node, service={**node.service, "NeedDaemonReload": "yes"}),
        ["reload systemd units", NO_RESTART, VERIFY_RUN],
    ),
    ("a registry added", MIRROR, lambda node: node, [f"write {HOSTS}", NO_RESTART, VERIFY_RUN]),
    (
        "a registry gone",
        {},
        lambda node: drifted(node, managed_hosts=[HOSTS]),
        [f"remove {HOSTS}", NO_RESTART, VERIFY_RUN],
    ),
    (
        "a proxy, crictl and the CNI plugins",
        {
            "containerd_http_proxy": "http://proxy.internal:3128",
            "crictl_version": "1.33.0",
            "cni_plugins_version": "1.7.1",
        },
        lambda node: node,
        [
            f"install the CNI plugins 1.7.1, crictl 1.33.0 {FETCHED}",
            f"write {DROPIN}, /etc/crictl.yaml",
            "reload systemd units",
            KEEP,
            f"restart the running containerd ({DROPIN} changed)",
            DROP,
            VERIFY_RUN,
        ],
    ),
    (
        "an old drop-in, disabled",
        {"containerd_rollback": False},
        lambda node: drifted(
            node,
            files={DROPIN: hashlib.sha256(b"old").hexdigest()},
            service={**node.service, "UnitFileState": "disabled"},
        ),
        [
            f"remove {DROPIN}",
            "reload systemd units",
            f"restart the running containerd ({DROPIN} changed)",
            "enable containerd",
            VERIFY_RUN,
        ],
    ),
    (
        "a kept release and leftovers",
        {},
        lambda node: drifted(
            node, kept_release="1.7.0", hidden_leftovers=["/usr/local/bin/.x.containerd-deploy-new"]
        ),
        ["remove what runs cut short left beside the deploy's files", NO_RESTART, DROP, VERIFY_RUN],
    ),
    (
        "running, disabled",
        {},
        lambda node: drifted(node, service={**node.service, "UnitFileState": "disabled"}),
        ["enable containerd", VERIFY_RUN],
    ),
    (
        "crictl no longer wanted",
        {},
        lambda node: drifted(node, manifests={**node.manifests, "crictl": Manifest()}),
        ["remove crictl", NO_RESTART, VERIFY_RUN],
    ),
    (
        "a fetch cut short",
        {},
        lambda node: drifted(node, staging_leftovers=["/var/cache/containerd-deploy/.fetch-1"]),
        ["remove what runs cut short left beside the deploy's files", NO_RESTART, VERIFY_RUN],
    ),
    (
        "a distribution package beside the deploy's",
        {"containerd_distro_package": "remove"},
        lambda node: node,
        ["remove the distribution's containerd package", NO_RESTART, VERIFY_RUN],
    ),
    (
        "a distribution package",
        {"containerd_distro_package": "remove"},
        None,
        [
            f"install containerd {VERSION}, runc {RUNC} {FETCHED}",
            f"write {CONFIG}, {UNIT} (config.toml from the new containerd's defaults)",
            "remove the distribution's containerd package",
            "reload systemd units",
            f"start containerd (containerd {VERSION} installed; runc {RUNC} installed; {UNIT} changed)",
            "enable containerd",
            VERIFY_NEW,
        ],
    ),
]
PINNED = "docker.io/library/nginx:1.27@sha256:" + "a" * 64


def imported(*shown: str) -> str:
    by_tag = [image for image in shown if "@" not in image]
    checked = (
        "(by its tag alone: not pinned by digest)"
        if len(by_tag) == len(shown)
        else f"(checked by digest; {', '.join(by_tag)} by its tag alone)"
        if by_tag
        else "(checked by digest)"
    )
    return f"import {', '.join(shown)} into the k8s.io namespace from the controller {checked}"


CASES += [
    (
        "images the node has",
        {"containerd_images": [PINNED]},
        lambda node: drifted(node, images=frozenset({f"docker.io/library/nginx@sha256:{'a' * 64}"})),
        ["no change", VERIFY_ONLY],
    ),
    (
        "an image the node lacks",
        {"containerd_images": [PINNED]},
        lambda node: node,
        [imported(PINNED), VERIFY_RUN],
    ),
    (
        "a fresh node with images and the sandbox image from the controller",
        {"containerd_images": [PINNED], "artifact_source": "controller"},
        None,
        [
            f"install containerd {VERSION}, runc {RUNC} (fetched by the controller, sha256 verified)",
            f"write {CONFIG}, {UNIT} (config.toml from the new containerd's defaults)",
            "reload systemd units",
            f"start containerd (containerd {VERSION} installed; runc {RUNC} installed; {UNIT} changed)",
            imported(PINNED, "registry.k8s.io/pause:3.10.1"),  # containerd 2.2's default
            "enable containerd",
            VERIFY_NEW,
        ],
    ),
]
DISTRO = [DistroPackage("dpkg", "containerd", "1.6.20~ds1-1", "/usr/bin/containerd")]


def plan_of(data: dict, node: NodeState) -> Plan:
    settings = settings_for(data)
    return plan_run(settings, node, artifacts.resolve(settings, "amd64", published=no_fetch))


def node_of(case: str, data: dict, change) -> NodeState:
    # The node as the deploy leaves it with no data: the case's data is what changed since.
    node = fresh() if change is None else change(converged(settings_for()))
    return drifted(node, distro_packages=DISTRO) if case.startswith("a distribution package") else node


@pytest.mark.parametrize("case, data, change, lines", CASES, ids=[case[0] for case in CASES])
def test_the_plan_says_what_the_run_will_do(case, data, change, lines):
    plan = plan_of(data, node_of(case, data, change))
    assert plan.lines() == lines
    assert plan.changes == (lines[0] != "no change")


def test_a_distribution_package_is_removed_only_when_the_data_says_so():
    node = drifted(converged(settings_for()), distro_packages=DISTRO)
    assert plan_of({"containerd_distro_package": "remove"}, node).distro_packages
    assert not plan_of({}, node).distro_packages  # (the deploy refuses that node before its plan)


def changed_ops(prepared) -> dict[str, object]:
    return {op.name.rsplit(" | ", 1)[-1]: op for op in prepared if op.changes}


@pytest.mark.parametrize("case, data, change, lines", CASES, ids=[case[0] for case in CASES])
def test_the_dry_run_and_the_real_run_read_the_same_plan(monkeypatch, case, data, change, lines):
    """Each operation says the same when pyinfra's dry run checks it as it is added as when it
    runs after all were added; and the operations that change are the ones the plan names."""
    node = node_of(case, data, change)
    plan = plan_of(data, node)
    prepared = prepare(monkeypatch, node, data, dry_run=True)
    assert [(op.name, op.dry_run_change) for op in prepared] == [(op.name, op.changes) for op in prepared]
    changed = changed_ops(prepared)
    # What each operation decided on its own, from the node state, against the plan.
    written = {name.split(" ", 1)[1] for name in changed if name.startswith(("Write /", "Install /"))}
    assert written == set(plan.write)
    removed = {name.split(" ", 2)[1] for name in changed if name.startswith("Remove /")}
    assert removed == set(plan.delete)
    installed = {
        component
        for component, shown in NAMES.items()
        if any(name.startswith(f"Install {shown} ") for name in changed)
    }
    assert installed == set(plan.install)
    dropped = {
        c for c, shown in NAMES.items() if any(name.startswith(f"Remove {shown} (no ") for name in changed)
    }
    assert dropped == set(plan.remove)
    assert any(name.startswith("Fetch and verify release files") for name in changed) == bool(
        plan.install or node.staging_leftovers
    )
    leftovers = "Remove what runs cut short left beside the deploy's files"
    assert (
        (leftovers in {op.name for op in prepared}) == (leftovers in changed) == bool(node.hidden_leftovers)
    )
    # A step adds an operation only when it has something to do.
    assert [op.name for op in prepared if not op.changes] == []
    assert any(name.startswith("Remove the distribution") for name in changed) == plan.distro_packages
    service = changed.get("Enable, start and check containerd")
    text = service.text() if service else ""
    assert ("systemctl enable" in text) == plan.enable
    assert ('systemctl start "$unit"' in text) == plan.start
    assert ('systemctl restart "$unit"' in text) == bool(plan.restart)
    assert ("systemctl daemon-reload" in text) == (
        plan.reload or plan.enable
    )  # enable: --no-reload, then one
    # What the deploy gave them from the plan.
    assert ("Take the node's run lock" in changed) == plan.changes
    assert any(name.startswith("Keep the running release") for name in changed) == plan.keep
    assert any(name.startswith("Drop the kept release") for name in changed) == plan.drop_kept
    assert ("Fetch images on the controller" in changed) == bool(plan.images or plan.archives)
    # (an import the sandbox image a new config names decides only when it runs)
    assert (IMPORT_OPERATION in changed) == bool(plan.images or plan.archives)
    hooks = [name for name in changed if name.startswith("Run containerd_restart_hook_")]
    assert len(hooks) == (2 if plan.restarts_running and "containerd_restart_hook_before" in data else 0)


@pytest.mark.parametrize("case, data, change, lines", CASES, ids=[case[0] for case in CASES])
def test_the_verify_step_runs_a_container_when_the_plan_changes_the_node(
    monkeypatch, case, data, change, lines
):
    import containerd_deploy.deploy.node as flow

    asked = []
    monkeypatch.setattr(
        flow, "verify_containerd", lambda *args, **kwargs: asked.append(kwargs["run_container"])
    )
    node = node_of(case, data, change)
    prepare(monkeypatch, node, {**data, "containerd_verify": True})
    assert asked == [plan_of(data, node).changes]


def test_the_run_says_its_plan(monkeypatch, caplog):
    with caplog.at_level("INFO"):
        prepare(monkeypatch, converged(settings_for()), CONFIG_DRIFT)
    said = [
        record.getMessage() for record in caplog.records if "containerd-deploy plan" in record.getMessage()
    ]
    assert said == [
        f"[node1] containerd-deploy plan: write {CONFIG}; {KEEP}; restart the running containerd "
        f"({CONFIG} changed); {DROP}"
    ]


def test_a_node_being_taken_back_is_planned_too():
    settings = settings_for({"containerd_state": "absent"})
    node = drifted(converged(settings), kept_release="1.7.0", files={DROPIN: "0" * 64})
    plan = plan_removal(settings, node)
    assert plan.lines() == [
        "stop and disable containerd",
        "remove containerd, runc",
        f"remove {CONFIG}, {UNIT}, {DROPIN}",
        "reload systemd units",
        DROP,
    ]
    assert plan.reload and plan.changes
    assert plan_removal(settings, fresh()).lines() == ["no change"]
    purged = plan_removal(settings_for({"containerd_state": "purged"}), fresh())
    assert purged.lines() == ["delete containerd's data in /var/lib/containerd, /run/containerd"]
    assert purged.changes


def test_a_config_that_cannot_be_made_is_refused_before_any_operation():
    from pyinfra.api.exceptions import DeployError

    with pytest.raises(DeployError, match=r"^node1: /etc/containerd/config.toml is not valid TOML"):
        plan_of({}, drifted(converged(settings_for()), config_text="version = 2\n[plugins\n"))
    # From defaults the installed binary did not give: nothing to start from.
    data = {"containerd_config_base": "default"}
    with pytest.raises(
        DeployError, match=r"^node1: /usr/local/bin/containerd config default printed nothing$"
    ):
        plan_of(data, drifted(converged(settings_for(data)), default_config=None))


@pytest.mark.parametrize("state", ["absent", "purged"])
@pytest.mark.parametrize(
    "kind", ["converged", "with registries and crictl", "fresh", "kept release only", "rolled back only"]
)
def test_a_removal_reads_one_plan_in_the_dry_run_and_the_real_run(monkeypatch, state, kind):
    from containerd_deploy.plan.files import crictl_config, text_sha256
    from containerd_deploy.remote.paths import CRICTL_CONFIG

    data = {"containerd_state": state}
    settings = settings_for(data)
    everything = settings_for({"crictl_version": "1.33.0", **MIRROR})
    node = {
        "converged": lambda: drifted(converged(settings), files={DROPIN: "0" * 64}),
        "with registries and crictl": lambda: drifted(
            converged(everything),
            managed_hosts=[HOSTS],
            files={DROPIN: "0" * 64, CRICTL_CONFIG: text_sha256(crictl_config())},
        ),
        "fresh": fresh,
        "kept release only": lambda: drifted(fresh(), kept_release="1.7.0"),
        "rolled back only": lambda: drifted(fresh(), rolled_back="0123abcd 2026-12-01T10:00:00Z"),
    }[kind]()
    plan = plan_removal(settings, node)
    prepared = prepare(monkeypatch, node, data, dry_run=True)
    assert [(op.name, op.dry_run_change) for op in prepared] == [(op.name, op.changes) for op in prepared]
    changed = [op.name.rsplit(" | ", 1)[-1] for op in prepared if op.changes]
    assert [op.name for op in prepared if not op.changes] == []  # no operation with nothing to do
    assert ("Take the node's run lock" in changed) == plan.changes
    removed = {name.split(" ", 2)[1] for name in changed if name.startswith("Remove /")}
    assert removed == set(plan.delete) | (
        {settings.containerd_deploy_state_dir}
        if node.manifests or node.kept_release or node.rolled_back
        else set()
    ) | ({settings.containerd_registry_config_path} if node.managed_hosts else set())
    # A directory the deploy made for a file goes with it when empty: not the unit's or crictl's.
    removals = {
        name.split(" ", 2)[1]: op
        for op in prepared
        if (name := op.name.rsplit(" | ", 1)[-1]).startswith("Remove /")
    }
    emptied = {path for path in plan.delete if "rmdir --ignore-fail-on-non-empty" in removals[path].text()}
    assert emptied == set(plan.delete) - {UNIT, CRICTL_CONFIG}
    assert ("Drop the release kept to roll back to" in changed) == plan.drop_kept
    assert {name.split(" ")[1] for name in changed if name.endswith(" files")} == set(plan.remove)
    assert ("Reload systemd units" in changed) == plan.reload
    assert any(name.startswith("Stop and disable") for name in changed) == plan.stop


def test_the_plan_holds_every_file_the_run_leaves_with_its_mode_and_writes_only_those_that_differ():
    """The file table configure_containerd writes from: each owned file's text and mode (0600 for
    credentials), and the node's copy now; on a node that has each file as wanted, none is written,
    and one that differs by a byte is."""
    from containerd_deploy.plan.files import (
        crictl_config,
        proxy_dropin_text,
        registry_files,
        text_sha256,
        unit_text,
    )

    settings = settings_for(
        {
            "containerd_https_proxy": "http://user:s3cret@proxy.internal:3128",
            "crictl_version": "1.33.0",
            "containerd_limit_nofile": "1048576",
            "containerd_registries": {
                "docker.io": {"mirrors": [{"host": "https://mirror.internal"}]},
                "quay.io": {
                    "mirrors": [{"host": "https://q.internal", "headers": {"Authorization": "Basic dTpw"}}]
                },
            },
        }
    )
    wanted = artifacts.resolve(settings, "amd64", published=no_fetch)
    hosts = registry_files(settings)
    texts = {
        CONFIG: converged(settings).config_text,
        UNIT: unit_text(settings.containerd_bin_dir, "1048576"),
        **{path: text for path, (text, _) in hosts.items()},
        DROPIN: proxy_dropin_text(settings),
        "/etc/crictl.yaml": crictl_config(),
    }
    node = drifted(
        converged(settings),
        files={path: text_sha256(text) for path, text in texts.items() if path not in (CONFIG, UNIT)},
        manifests=converged(settings).manifests,
    )
    plan = plan_run(settings, node, wanted)
    assert {path: (file.text, file.mode) for path, file in plan.files.items()} == {
        CONFIG: (texts[CONFIG], "644"),
        UNIT: (texts[UNIT], "644"),
        "/etc/containerd/certs.d/docker.io/hosts.toml": (
            texts["/etc/containerd/certs.d/docker.io/hosts.toml"],
            "644",
        ),
        "/etc/containerd/certs.d/quay.io/hosts.toml": (
            texts["/etc/containerd/certs.d/quay.io/hosts.toml"],
            "600",
        ),
        DROPIN: (texts[DROPIN], "600"),
        "/etc/crictl.yaml": (texts["/etc/crictl.yaml"], "644"),
    }
    assert plan.write == () and plan.delete == ()
    assert [
        path for path, file in plan.files.items() if file.current_sha256 != text_sha256(texts[path])
    ] == []
    for path in texts:
        if path in (CONFIG, UNIT):
            continue
        changed = drifted(node, files={**node.files, path: text_sha256(texts[path] + " ")})
        assert plan_run(settings, changed, wanted).write == (path,), path
    # A component installed earlier and no longer asked for is removed (with its manifest).
    cni = Manifest({"version": "1.7.1"}, {"/opt/cni/bin/bridge": "1:2:3"}, {"/opt/cni/bin/bridge": "1:2:3"})
    assert plan_run(
        settings, drifted(node, manifests={**node.manifests, "cni_plugins": cni}), wanted
    ).remove == ("cni_plugins",)


def test_the_plan_names_who_fetches_the_hooks_only_around_a_restart_and_no_verify_when_it_is_off():
    controller = {"artifact_source": "controller", "containerd_rollback": False}
    assert plan_of(controller, upgraded(converged(settings_for()))).lines() == [
        f"install containerd 1.7.0 → {VERSION} (fetched by the controller, sha256 verified)",
        f"restart the running containerd (containerd {VERSION} installed)",
        imported("registry.k8s.io/pause:3.10"),  # the sandbox image comes with the release files
        VERIFY_RUN,
    ]
    # the hooks run only when a running containerd restarts: not on a first start, nor a no-op
    assert HOOKS_RUN not in plan_of(HOOKS, fresh()).lines()
    assert plan_of({**HOOKS, "containerd_verify": False}, converged(settings_for())).lines() == ["no change"]
    with_hooks = plan_of(
        {**HOOKS, **CONFIG_DRIFT, "containerd_restart_hook_before": None}, converged(settings_for())
    )
    assert "run containerd_restart_hook_after on the controller around the restart" in with_hooks.lines()
    # a reinstall of the same version says the version once
    same = drifted(
        converged(settings_for()),
        manifests={
            **converged(settings_for()).manifests,
            "runc": Manifest({"version": RUNC, "sha256": "0" * 64}, {"/usr/local/sbin/runc": "x"}, {}),
        },
    )
    assert plan_of({"containerd_rollback": False}, same).lines()[0] == f"install runc {RUNC} {FETCHED}"
    # with no registry hosts directory, the verify step pulls nothing: the plan does not promise it
    assert plan_of(
        {**CONFIG_DRIFT, "containerd_registry_config_path": ""}, converged(settings_for())
    ).lines()[-1] == (
        "verify containerd, then run a container from registry.k8s.io/pause:3.10 (if the node has it)"
    )


def test_images_the_node_has_under_every_name_are_no_change_and_the_sandbox_image_comes_with_the_controller():
    data = {"containerd_images": [PINNED], "artifact_source": "controller"}
    node = converged(settings_for(data))
    plan = plan_of(data, node)
    assert [str(image) for image in plan.images] == [PINNED, "registry.k8s.io/pause:3.10"]
    assert plan.changes
    names = frozenset({f"docker.io/library/nginx@sha256:{'a' * 64}"})
    plan = plan_of(data, drifted(node, images=names | {"registry.k8s.io/pause:3.10"}))
    assert plan.images == () and not plan.changes and plan.lines() == ["no change", VERIFY_ONLY]
    plan = plan_of({**data, "containerd_images_sandbox": False}, drifted(node, images=names))
    assert plan.images == () and not plan.changes


def test_a_sandbox_image_the_controller_cannot_know_is_said_with_the_key_that_names_it():
    """A config that imports other files names its sandbox image where the deploy does not read:
    with artifact_source=controller the plan says none comes, and which key brings one."""
    data = {"artifact_source": "controller"}
    node = drifted(
        converged(settings_for(data)),
        config_text='version = 3\nimports = ["/etc/containerd/conf.d/*.toml"]\n',
    )
    lines = plan_of(data, node).lines()
    unknown = (
        "bring no sandbox image from the controller: the config this run leaves names none this deploy can "
        "read (a file it imports may; a containerd release's default is known up to 2.3): set "
        "containerd_sandbox_image to bring it"
    )
    assert lines[-2:] == [
        unknown,
        f"verify containerd, then run a container from the sandbox image the config names {PULLED}",
    ]
    assert plan_of(data, node).images == ()
    assert unknown not in plan_of({**data, "containerd_images_sandbox": False}, node).lines()
    assert unknown not in plan_of({}, node).lines()  # the node's registries bring it
    named = plan_of({**data, "containerd_sandbox_image": "registry.k8s.io/pause:3.10"}, node)
    assert unknown not in named.lines() and [str(image) for image in named.images] == [
        "registry.k8s.io/pause:3.10"
    ]
