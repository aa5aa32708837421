"""Container registries for the test nodes: Debian's docker-registry (the CNCF distribution
registry), run from its .deb on 127.0.0.1, with the images a node pulls pushed by skopeo.

Two instances share one storage directory (the same images in both):
- `tls`: HTTPS with a certificate from a throw-away CA made here (openssl), for 127.0.0.1 and
  for 10.0.2.2 (where the VMs reach this machine), and basic auth (htpasswd, bcrypt);
- `plain`: plain HTTP without auth, for the `skip_verify`/http mirror cases.

Images pushed (names as a node asks for them through a mirror, i.e. without the registry):
- `library/nginx:alpine`: nginx built from Debian's packages (nginx and its libraries), so that
  `docker.io/library/nginx:alpine` resolves through a mirror of docker.io;
- `pause:3.10`: the conformance suite's busybox pause image, so that a node pinning
  `registry.k8s.io/pause:3.10` pulls its sandbox image through a mirror, as a kubelet node does.

Nothing else is reachable: `docker.io` itself is not, so a pull only works through a mirror.
"""

import base64
import fcntl
import io
import json
import os
import secrets
import signal
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from containerd_deploy.conformance import oci

from . import mirror, vm
from .paths import cache_root, run_root

DEBIAN_SUITE = "bookworm"  # whose docker-registry and nginx the harness uses
STATE = "registry.json"
USER = "containerd-deploy"
NGINX_IMAGE = "library/nginx:alpine"
NGINX_REFERENCE = f"docker.io/{NGINX_IMAGE}"
NGINX_PAGE_MARK = "Welcome to nginx!"  # the title of the page nginx serves
PAUSE_IMAGE = "pause:3.10"
PAUSE_REFERENCE = f"registry.k8s.io/{PAUSE_IMAGE}"
NODE_CA_PATH = "/etc/ssl/containerd-deploy-test-registry-ca.pem"  # where tests put the CA on a node

# The nginx image: the binary, the libraries it links (from Debian's .debs), a page and a config.
NGINX_PACKAGES = ["nginx", "nginx-common", "libc6", "libcrypt1", "libpcre2-8-0", "libssl3", "zlib1g"]
NGINX_CONF = """\
user nobody nogroup;
worker_processes 1;
pid /run/nginx.pid;
error_log stderr warn;
events { worker_connections 64; }
http {
    include /etc/nginx/mime.types;
    access_log off;
    server {
        listen 80 default_server;
        root /usr/share/nginx/html;
        index index.html;
    }
}
"""


def _work_dir() -> Path:
    root = run_root() / "registry"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def _binary() -> Path:
    """Debian's docker-registry binary, extracted once from its .deb into the cache."""
    target = cache_root() / "registry" / "docker-registry"
    if not target.exists():
        deb = mirror.suite_debs(DEBIAN_SUITE, ["docker-registry"])["docker-registry"]
        with tempfile.TemporaryDirectory() as work:
            subprocess.run(["dpkg-deb", "-x", str(deb), work], check=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(work) / "usr/bin/docker-registry", target)
    return target


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def tls_files() -> dict[str, Path]:
    """A throw-away CA and a server certificate it signed for 127.0.0.1 and 10.0.2.2 (made once
    per checkout), and the htpasswd file with the test user's bcrypt hash."""
    work = _work_dir()
    files = {
        name: work / f"{name}"
        for name in ("ca.key", "ca.crt", "server.key", "server.crt", "htpasswd", "password")
    }
    # Made for 30 days: well before they expire, a checkout gets new ones.
    if (
        all(path.exists() for path in files.values())
        and time.time() - files["ca.crt"].stat().st_mtime < 20 * 86400
    ):
        return files
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=containerd-deploy test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=work,
    )
    (work / "server.ext").write_text(
        f"subjectAltName={','.join(f'IP:{address}' for address in sorted(set(vm.CONTROLLER_ADDRESS.values())))},DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=containerd-deploy test registry",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=work,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
        cwd=work,
    )
    password = secrets.token_urlsafe(18)
    hashed = subprocess.run(
        ["htpasswd", "-nbB", USER, password], check=True, capture_output=True, text=True
    ).stdout
    (work / "htpasswd").write_text(hashed.strip() + "\n")
    (work / "password").write_text(password)
    return files


def password() -> str:
    return tls_files()["password"].read_text()


def authorization(user: str = USER, secret: str | None = None) -> str:
    """The `Authorization` header value a node sends to the TLS instance."""
    token = base64.b64encode(f"{user}:{password() if secret is None else secret}".encode()).decode()
    return f"Basic {token}"


def _config(port: int, tls: bool) -> str:
    files = tls_files()
    storage = _work_dir() / "storage"
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: text",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    if tls:
        lines += [
            "  tls:",
            f"    certificate: {files['server.crt']}",
            f"    key: {files['server.key']}",
            "auth:",
            "  htpasswd:",
            "    realm: containerd-deploy",
            f"    path: {files['htpasswd']}",
        ]
    return "\n".join(lines) + "\n"


def log_path(kind: str) -> Path:
    """Each instance's log: its access lines show which instance served a pull."""
    return _work_dir() / f"{kind}.log"


def _answers(info: dict, kind: str) -> bool:
    entry = info.get(kind)
    if not entry:
        return False
    try:
        os.kill(entry["pid"], 0)
    except OSError:
        return False
    scheme = "https" if kind == "tls" else "http"
    context = ssl.create_default_context(cafile=str(tls_files()["ca.crt"]))
    try:
        urllib.request.urlopen(
            f"{scheme}://127.0.0.1:{entry['port']}/v2/", timeout=5, context=context
        ).close()
    except urllib.error.HTTPError as error:
        return error.code == 401  # up, and asking for credentials
    except OSError:
        return False
    return True


def _alive() -> dict | None:
    path = run_root() / STATE
    info = json.loads(path.read_text()) if path.exists() else None
    return info if info and all(_answers(info, kind) for kind in ("tls", "plain")) else None


def _start(kind: str) -> dict:
    port = vm.free_port()
    config = _work_dir() / f"{kind}.yml"
    config.write_text(_config(port, tls=kind == "tls"))
    log = open(log_path(kind), "ab")
    process = subprocess.Popen(
        [str(_binary()), "serve", str(config)],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return {"pid": process.pid, "port": port}


def ensure() -> dict:
    """Both registry instances of this checkout, with the images pushed (started once, shared by
    every node; stopped with the artifact mirror). Returns {"tls": {pid, port}, "plain": {...}}."""
    with open(run_root() / ".registry.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = _alive()
        if info:
            return info
        stop()
        info = {kind: _start(kind) for kind in ("tls", "plain")}
        deadline = time.monotonic() + 30
        while not all(_answers(info, kind) for kind in info):
            if time.monotonic() > deadline:
                stop(info)
                raise RuntimeError(
                    f"the test registry did not start; see {log_path('tls')} and {log_path('plain')}"
                )
            time.sleep(0.2)
        (run_root() / STATE).write_text(json.dumps(info))
        _push_images(info["tls"]["port"])
        return info


def stop(info: dict | None = None) -> None:
    path = run_root() / STATE
    if info is None:
        info = json.loads(path.read_text()) if path.exists() else {}
    for entry in info.values():
        try:
            os.kill(entry["pid"], signal.SIGTERM)
        except OSError:
            pass
    path.unlink(missing_ok=True)


def _push_images(port: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        images = {
            NGINX_IMAGE: nginx_image(),
            PAUSE_IMAGE: oci.build(name=PAUSE_REFERENCE, command=oci.PAUSE_COMMAND),
        }
        certs = work / "certs"
        certs.mkdir()
        # Our own trust policy: the images are built here, and the machine may have none.
        policy = work / "policy.json"
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (certs / "ca.crt").write_bytes(tls_files()["ca.crt"].read_bytes())
        for name, tarball in images.items():
            archive = work / "image.tar"
            archive.write_bytes(tarball)
            result = subprocess.run(
                [
                    "skopeo",
                    "--policy",
                    str(policy),
                    "copy",
                    "--quiet",
                    "--dest-cert-dir",
                    str(certs),
                    "--dest-creds",
                    f"{USER}:{password()}",
                    f"oci-archive:{archive}",
                    f"docker://127.0.0.1:{port}/{name}",
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode:
                raise RuntimeError(f"skopeo could not push {name}: {result.stderr.strip()}")


def _debian_tree(packages: list[str], into: Path) -> None:
    for deb in mirror.suite_debs(DEBIAN_SUITE, packages).values():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)


def _nginx_members(root: Path) -> list[Path]:
    """What nginx needs from the extracted packages: the binary, shared libraries (no gconv,
    engines or docs), the loader's /lib64 link, mime types and the default page."""
    wanted = [
        root / "usr/sbin/nginx",
        root / "lib64/ld-linux-x86-64.so.2",
        root / "etc/nginx/mime.types",
        root / "usr/share/nginx/html/index.html",
    ]
    for libdir in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"):
        wanted += [
            path for path in sorted((root / libdir).iterdir()) if ".so" in path.name and not path.is_dir()
        ]
    return wanted


def nginx_image(name: str = NGINX_REFERENCE) -> bytes:
    """The OCI layout tarball of an nginx image built from Debian's packages (deterministic)."""
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        _debian_tree(NGINX_PACKAGES, root)
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            directories = [
                "etc",
                "etc/nginx",
                "lib",
                "lib64",
                "lib/x86_64-linux-gnu",
                "usr",
                "usr/lib",
                "usr/lib/x86_64-linux-gnu",
                "usr/sbin",
                "usr/share",
                "usr/share/nginx",
                "usr/share/nginx/html",
                "run",
                "var",
                "var/lib",
                "var/lib/nginx",
                "var/log",
                "var/log/nginx",
            ]
            for directory in directories:
                tar.addfile(oci._tarinfo(directory, type=tarfile.DIRTYPE, mode=0o755))
            tar.addfile(oci._tarinfo("tmp", type=tarfile.DIRTYPE, mode=0o1777))
            for path in _nginx_members(root):
                arcname = str(path.relative_to(root))
                if path.is_symlink():
                    tar.addfile(
                        oci._tarinfo(arcname, type=tarfile.SYMTYPE, linkname=os.readlink(path), mode=0o777)
                    )
                else:
                    data = path.read_bytes()
                    tar.addfile(
                        oci._tarinfo(arcname, size=len(data), mode=path.stat().st_mode & 0o777),
                        io.BytesIO(data),
                    )
            for arcname, text in {
                "etc/nginx/nginx.conf": NGINX_CONF,
                "etc/passwd": "root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
                "etc/group": "root:x:0:\nnogroup:x:65534:\n",
            }.items():
                data = text.encode()
                tar.addfile(oci._tarinfo(arcname, size=len(data), mode=0o644), io.BytesIO(data))
        return oci.layout_tarball(
            raw.getvalue(),
            name,
            "amd64",
            {
                "Cmd": ["/usr/sbin/nginx", "-g", "daemon off;"],
                "ExposedPorts": {"80/tcp": {}},
                "StopSignal": "SIGQUIT",
            },
        )


def node_registries(
    info: dict, address: str, *, mirror_of: tuple[str, ...] = ("docker.io", "registry.k8s.io")
) -> dict:
    """containerd_registries data making the TLS instance (CA at NODE_CA_PATH, basic auth; at
    `address` as the node sees this machine) the mirror of each registry in `mirror_of`."""
    host = f"https://{address}:{info['tls']['port']}"
    return {
        name: {"mirrors": [{"host": host, "ca": NODE_CA_PATH, "headers": {"Authorization": authorization()}}]}
        for name in mirror_of
    }


def install_ca(node_vm) -> None:
    """Put the throw-away CA where node_registries() says it is."""
    ca = tls_files()["ca.crt"].read_text()
    node_vm.ssh(f"cat > {NODE_CA_PATH} <<'CONTAINERD_DEPLOY_EOF'\n{ca}CONTAINERD_DEPLOY_EOF")


def controller_registries_conf(
    info: dict, mirror_of: tuple[str, ...] = ("docker.io", "registry.k8s.io"), instance: str = "plain"
) -> Path:
    """A registries.conf (containers-registries.conf(5)) for skopeo on this machine, the
    controller, making the `instance` (plain, or tls: its certificate not checked, its login
    asked for) the place of each registry in `mirror_of`: what an operator's controller has in
    /etc/containers/registries.conf, given to the deploy by $CONTAINERS_REGISTRIES_CONF."""
    location = f"127.0.0.1:{info[instance]['port']}"
    path = run_root() / f"registries-{info[instance]['port']}.conf"
    path.write_text(
        "".join(
            f'[[registry]]\nprefix = "{name}"\nlocation = "{location}"\ninsecure = true\n\n'
            for name in mirror_of
        )
    )
    return path


def manifest_digest(reference: str, conf: Path) -> str:
    """The digest of `reference`'s manifest in the registry `conf` routes it to."""
    result = subprocess.run(
        [
            "skopeo",
            "--registries-conf",
            str(conf),
            "inspect",
            "--no-tags",
            "--format",
            "{{.Digest}}",
            f"docker://{reference}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()
