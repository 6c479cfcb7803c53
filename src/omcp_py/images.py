"""The sandbox image: pulled on first use with progress, or built from our definition.

A first ``create_sandbox`` on a new machine finds no image, and a pull of several
hundred MB outlasts an MCP client's request deadline. So the pull runs in a thread of
its own, shared by every caller that needs the image (the warm pool, each
create_sandbox), and each waiting caller reports its progress every second.
"""

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omcp_py.errors import ImageUnavailable

log = logging.getLogger(__name__)

# The image `omcp_py image build` makes: the data stack on a non-root user.
RECOMMENDED_IMAGE = "omcp-py-sandbox:latest"
BUILD_HINT = (
    f"or build the recommended image with `omcp_py image build` and set "
    f"DOCKER_IMAGE={RECOMMENDED_IMAGE}"
)
# (done so far, expected in all, what is happening): bytes of a pull, seconds of a run
Progress = Callable[[float, float, str], None]


def fix_for_missing(image: str) -> str:
    """What to run when ``image`` is not on the engine."""
    if image == RECOMMENDED_IMAGE:
        return "run `omcp_py image build`"
    return (
        f"run `docker pull {image}` where the engine can reach its registry (`docker login` "
        f"first if it is private), {BUILD_HINT}, or set DOCKER_IMAGE to an image that "
        f"`docker images` lists"
    )


@dataclass
class _Layer:
    total: int = 0
    downloaded: int = 0
    extracted: int = 0


@dataclass
class _Pull:
    """One pull in flight, watched by every caller waiting for it."""

    image: str
    started: float = field(default_factory=time.monotonic)
    layers: dict[str, _Layer] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def record(self, event: dict[str, Any]) -> None:
        if "error" in event:
            self.error = str(event.get("error"))
            return
        layer_id, status = event.get("id"), str(event.get("status", ""))
        if not layer_id or ":" in status:  # "Digest: ...", "Status: ..." have no layer
            return
        layer = self.layers.setdefault(layer_id, _Layer())
        detail = event.get("progressDetail") or {}
        current, total = int(detail.get("current") or 0), int(detail.get("total") or 0)
        if total:
            layer.total = max(layer.total, total)
        if status == "Downloading":
            layer.downloaded = max(layer.downloaded, current)
        elif status == "Extracting":
            layer.downloaded = layer.total
            layer.extracted = max(layer.extracted, current)
        elif status in ("Download complete", "Already exists", "Pull complete"):
            layer.downloaded = layer.total
            if status != "Download complete":
                layer.extracted = layer.total

    def status(self) -> tuple[int, int, str]:
        total = sum(layer.total for layer in self.layers.values())
        downloaded = sum(layer.downloaded for layer in self.layers.values())
        extracted = sum(layer.extracted for layer in self.layers.values())
        complete = sum(
            1 for layer in self.layers.values() if layer.total and layer.extracted >= layer.total
        )
        message = (
            f"pulling Docker image {self.image} (first use): {downloaded / 1e6:.1f} of "
            f"{total / 1e6:.1f} MB downloaded, {complete} of {len(self.layers)} layers ready, "
            f"{time.monotonic() - self.started:.0f} s"
        )
        return downloaded + extracted, 2 * total, message


class ImagePuller:
    """Makes sure an image is on the engine; one pull per image at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pulls: dict[str, _Pull] = {}
        # Images known to be on the engine of ``_seen_by``: every sandbox creation asks,
        # and the answer only changes if someone removes the image (see forget).
        self._present: set[str] = set()
        self._seen_by: Any = None

    def forget(self, image: str) -> None:
        """The engine said ``image`` is missing after all: look (and pull) again."""
        self._present.discard(image)

    def ensure(self, client: Any, image: str, progress: Progress | None = None) -> bool:
        """Return once ``image`` is on the engine, pulling it first if needed (blocking).

        Args:
            client: a connected ``docker.DockerClient``.
            image: the image reference.
            progress: called about every second while a pull is under way.

        Returns:
            True when it had to be pulled.

        Raises:
            ImageUnavailable: the pull failed; the message says how to provide it.
        """
        import docker

        if self._seen_by is not client:  # a new connection may be another engine
            self._present, self._seen_by = set(), client
        if image in self._present:
            return False
        try:
            client.api.inspect_image(image)
            self._present.add(image)
            return False
        except docker.errors.ImageNotFound:
            pass
        with self._lock:
            pull = self._pulls.get(image)
            if pull is None or pull.done.is_set():
                pull = _Pull(image)
                self._pulls[image] = pull
                # Not the caller's thread: a caller that gives up (its request cancelled)
                # leaves the pull running for the next one.
                threading.Thread(
                    target=self._pull, args=(client, pull), name=f"pull {image}", daemon=True
                ).start()
        last = -1

        def tell(message: str | None = None) -> None:
            nonlocal last
            if progress is None:
                return
            done, total, status = pull.status()
            # MCP progress must increase with each notification: nudge by one byte
            # when a quiet registry sent nothing new, so the client still hears.
            last = max(done, last + 1)
            progress(last, max(total, last), message or status)

        tell()  # at once: the client learns why this call is slow
        while not pull.done.wait(1.0):
            tell()
        if pull.error is not None:
            raise ImageUnavailable(
                f"Docker image {image!r} is not on the engine and pulling it failed: "
                f"{pull.error}. To fix: {fix_for_missing(image)}."
            )
        self._present.add(image)
        tell(f"pulled Docker image {image} in {time.monotonic() - pull.started:.1f} s")
        return True

    def _pull(self, client: Any, pull: _Pull) -> None:
        repository, tag = _split(pull.image)
        log.info("pulling Docker image %s (it is not on the engine)", pull.image)
        try:
            for event in client.api.pull(repository, tag=tag, stream=True, decode=True):
                pull.record(event)
        except Exception as exc:
            pull.error = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
        if pull.error is None:
            log.info("pulled %s in %.1f s", pull.image, time.monotonic() - pull.started)
        else:
            log.warning("could not pull %s: %s", pull.image, pull.error)
        pull.done.set()


def _split(image: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` into what the pull API takes: (repository, tag or digest)."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"


def sandbox_image_context() -> Path:
    """The directory of the recommended image's Dockerfile, shipped in the package."""
    return Path(str(resources.files("omcp_py") / "sandbox_image"))


def build_sandbox_image(
    client: Any,
    tag: str = RECOMMENDED_IMAGE,
    base_image: str | None = None,
    ca_cert: Path | None = None,
    log_line: Callable[[str], None] = print,
) -> None:
    """Build the recommended sandbox image with the engine (blocking).

    Args:
        client: a connected ``docker.DockerClient``.
        tag: the name to give the image.
        base_image: the Python image to start from (default: the Dockerfile's).
        ca_cert: a CA certificate trusted while pip downloads (TLS-intercepting proxies).
        log_line: where each line of the build's output goes.

    Raises:
        ImageUnavailable: the build failed; the message has the engine's reason.
    """
    args: dict[str, str] = {}
    if base_image:
        args["BASE_IMAGE"] = base_image
    with tempfile.TemporaryDirectory(prefix="omcp-image-") as tmp:
        context = Path(tmp)
        shutil.copy(sandbox_image_context() / "Dockerfile", context / "Dockerfile")
        if ca_cert is not None:
            shutil.copy(ca_cert, context / "extra-ca.crt")
            args["EXTRA_CA_CERT"] = "extra-ca.crt"
        error = None
        layers: list[str] = []  # the image of each step that succeeded
        tls_failed = False
        for event in client.api.build(
            path=str(context), tag=tag, buildargs=args, rm=True, forcerm=True, decode=True
        ):
            if "stream" in event:
                for line in str(event["stream"]).splitlines():
                    if line.strip():
                        log_line(line)
                    tls_failed = tls_failed or "CERTIFICATE_VERIFY_FAILED" in line
                    if line.strip().startswith("---> ") and " " not in line.strip()[5:]:
                        layers.append(line.strip()[5:])
            if "error" in event:
                error = str(event["error"]).strip()
    if error is None:
        return
    _remove_leftovers(client, layers)
    if tls_failed:
        raise ImageUnavailable(
            f"building {tag} failed: pip in the build could not verify the package index's "
            f"certificate (a TLS-intercepting proxy or a private CA). Build again with "
            f"`omcp_py image build --ca-cert FILE`, FILE the CA bundle this machine trusts "
            f"(on Debian and Ubuntu /etc/ssl/certs/ca-certificates.crt)."
        )
    reason = error.split(" returned a non-zero code")[0]
    if reason.startswith("The command '"):  # the Dockerfile's RUN line: not the reason
        reason = "a build step failed; its output is above"
    raise ImageUnavailable(f"building {tag} failed: {reason[:500]}")


def _remove_leftovers(client: Any, layers: list[str]) -> None:
    """Remove what a failed build left: the untagged image of its last good step (and
    its untagged parents); never a tagged image such as the base."""
    import docker

    for layer in reversed(layers):
        try:
            if client.api.inspect_image(layer).get("RepoTags"):
                return
            client.api.remove_image(layer)
        except docker.errors.APIError as exc:
            log.debug("left build layer %s: %s", layer, exc)
            return
