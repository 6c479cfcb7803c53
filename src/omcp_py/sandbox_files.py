"""The file verbs over this server's sandboxes: upload, download, list. The checks and
the wording are in ``files``; the confinement itself happens in the sandbox, in PID 1's
file helper (``runner/pid1/files.py``)."""

from typing import Any

from omcp_py import files, host_files, outcomes
from omcp_py.config import SandboxConfig
from omcp_py.containers import Containers
from omcp_py.errors import OmcpError
from omcp_py.models import ExportResult, ImportResult, ListFilesResult, UploadResult
from omcp_py.sandboxes import Registry, Sandbox, busy
from omcp_py.workers import Workers


class SandboxFiles:
    """Files in and out of the sandboxes of one server."""

    def __init__(
        self, config: SandboxConfig, registry: Registry, containers: Containers, workers: Workers
    ) -> None:
        self.config = config
        self.registry = registry
        self.containers = containers
        self.workers = workers

    async def upload(
        self,
        sandbox_id: str,
        path: str,
        text: str | None = None,
        content_base64: str | None = None,
    ) -> UploadResult:
        """Write a file into a sandbox (parent directories are made), replacing any file
        of that name.

        Args:
            sandbox_id: the sandbox.
            path: relative to /sandbox, or absolute under /sandbox or /tmp.
            text: the content as text (written as UTF-8); or
            content_base64: the content as base64.

        Returns:
            Where it is, its size and its SHA-256.

        Raises:
            SandboxNotFound: no such sandbox.
            FileRefused: the path leaves the sandbox's files, goes through a link, names
                a directory or a special file; the content is too large or the disk full.
            InvalidArgument: not exactly one of text and content_base64, or bad base64.
        """
        sandbox = self.registry.get(sandbox_id)
        path = files.check_path(path)
        content = files.decode_upload(text, content_base64, self.config.max_upload_size)
        answer, _ = await self._file(sandbox, {"op": "put", "path": path, "max": 0}, content)
        return files.upload_result(answer, content)

    async def download(self, sandbox_id: str, path: str) -> files.Download:
        """Read a whole file of a sandbox.

        Args:
            sandbox_id: the sandbox.
            path: relative to /sandbox, or absolute under /sandbox or /tmp.

        Returns:
            Its description (text files carry their text) and its bytes.

        Raises:
            SandboxNotFound: no such sandbox.
            FileRefused: the path leaves the sandbox's files, goes through a link, is
                missing, a directory or a special file, or is over MAX_DOWNLOAD_SIZE
                or MAX_RESULT_SIZE.
        """
        sandbox = self.registry.get(sandbox_id)
        request = {
            "op": "get",
            "path": files.check_path(path),
            # Nothing larger fits one result, whatever form it takes.
            "max": min(self.config.max_download_size, self.config.max_result_size),
        }
        answer, data = await self._file(sandbox, request)
        return files.download(answer, data)

    async def import_host(self, sandbox_id: str, host_path: str, path: str) -> ImportResult:
        """Copy a file of an input directory (HOST_INPUT_DIRS) into a sandbox.

        Raises:
            SandboxNotFound: no such sandbox.
            FileRefused: the host path leaves the input directories, goes through a link,
                is missing or not a regular file, or is over MAX_UPLOAD_SIZE; or the
                sandbox path is refused.
        """
        sandbox = self.registry.get(sandbox_id)
        path = files.check_path(path)
        got = await self.workers.control(
            host_files.read_input, self.config, host_path, self.config.max_upload_size
        )
        answer, _ = await self._file(sandbox, {"op": "put", "path": path, "max": 0}, got.data)
        done = files.upload_result(answer, got.data)
        return ImportResult(**done.model_dump(), host_path=got.path)

    async def export(self, sandbox_id: str, path: str, name: str | None) -> ExportResult:
        """Copy a sandbox file into HOST_OUTPUT_DIR under a new name (never overwriting).

        Raises:
            SandboxNotFound: no such sandbox.
            FileRefused: the sandbox path is refused or over MAX_DOWNLOAD_SIZE; the name
                is not a plain file name; the directory cannot be written.
        """
        sandbox = self.registry.get(sandbox_id)
        request = {
            "op": "get",
            "path": files.check_path(path),
            "max": self.config.max_download_size,
        }
        if name is not None:
            host_files.check_output_name(name)
        answer, data = await self._file(sandbox, request)
        got = files.download(answer, data)
        # The name may come from the sandbox (its file's): it is made safe first.
        target = host_files.safe_output_name(name or got.result.path.rsplit("/", 1)[-1])
        written = await self.workers.control(host_files.write_output, self.config, target, data)
        return ExportResult(
            success=True,
            path=got.result.path,
            host_path=str(written),
            uri=written.as_uri(),
            size=got.result.size,
            sha256=got.result.sha256,
            mime_type=got.result.mime_type,
        )

    async def list(self, sandbox_id: str, path: str = "/sandbox") -> ListFilesResult:
        """List a directory of a sandbox, all the way down (links are shown, not followed).

        Args:
            sandbox_id: the sandbox.
            path: the directory: relative to /sandbox, or absolute under /sandbox or /tmp.

        Returns:
            Its entries with sizes, and the room left.

        Raises:
            SandboxNotFound: no such sandbox.
            FileRefused: the path leaves the sandbox's files, goes through a link, is
                missing or not a directory.
        """
        sandbox = self.registry.get(sandbox_id)
        request = {"op": "list", "path": files.check_path(path), "max": 0}
        answer, _ = await self._file(sandbox, request)
        return files.listing(answer)

    async def _file(
        self, sandbox: Sandbox, request: dict[str, Any], content: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        sandbox.touch()
        # The runner takes one request at a time: a file waits for a run under way.
        async with busy(sandbox, sandbox.lock):
            try:
                answer, data = await self.workers.run(
                    self.workers.executions,
                    self.containers.with_runner,
                    sandbox,
                    lambda runner: runner.file_op(request, content),
                )
            except OmcpError:
                if not self.registry.is_current(sandbox):
                    raise outcomes.removed_during_run(sandbox.id) from None
                raise
        if answer.get("error"):
            raise files.refusal(answer, self.config, request["op"])
        return answer, data
