"""The emulated control plane: the ``modal.client.ModalClient`` RPCs the sandbox workflow uses.

Served: ``ClientHello``, ``AuthTokenGet``, ``EnvironmentGetOrCreate``, ``AppGetOrCreate``,
``SecretGetOrCreate``, ``ImageGetOrCreate``, ``ImageJoinStreaming``; for V2 sandboxes (the SDK's
default) ``SandboxCreateV2``, ``SandboxGetTaskIdV2``, ``SandboxGetCommandRouterAccess``,
``SandboxWaitV2``, ``SandboxTerminateV2``, ``SandboxListV2``, ``SandboxTagsSetV2``,
``SandboxTagsGetV2``, ``SandboxGetFromNameV2``; for V1 sandboxes (``MODAL_SANDBOX_V2=0``)
``SandboxCreate``, ``SandboxGetTaskId``, ``TaskGetCommandRouterAccess``, ``SandboxWait``,
``SandboxTerminate``, ``SandboxList``, ``SandboxTagsSet``, ``SandboxTagsGet``,
``SandboxGetFromName``, and the V1 entrypoint stdio ``SandboxGetLogs`` and ``SandboxStdinWrite``.
Every other RPC fails with ``UNIMPLEMENTED`` naming it (:mod:`.unimplemented`).

Credentials are checked before any handler runs (see :mod:`.server`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from google.protobuf import empty_pb2
from grpclib import GRPCError, Status
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientBase

from .sandboxes import Sandbox
from .state import EmulatorState, environment_name
from .tokens import new_sandbox_id, new_task_id
from .unimplemented import complete

__all__ = ["ControlPlane", "SERVICE"]

log = logging.getLogger("sandboxkit_modal.emulator")

SERVICE = "ModalClient"

#: Longest a wait RPC holds before answering "still running" (the SDK asks again).
MAX_WAIT = 50.0

OCT = api_pb2.ObjectCreationType
NetworkAccessType = api_pb2.NetworkAccess.NetworkAccessType


class ControlPlane(ModalClientBase):
    """``ModalClient`` handlers over an :class:`~.state.EmulatorState`."""

    def __init__(self, state: EmulatorState, record_dir: str | None = None) -> None:
        self.state = state
        self.record_dir = record_dir

    # -- helpers --------------------------------------------------------------------------------

    def router_access(self, sandbox: Sandbox) -> api_pb2.CommandRouterAccess:
        """The task command router's URL and a fresh token for ``sandbox``'s task."""
        if not sandbox.running:
            raise GRPCError(Status.FAILED_PRECONDITION, f"Sandbox {sandbox.id} has already finished")
        jwt = self.state.minter.mint(
            self.state.config.token_ttl, task_id=sandbox.task_id, sandbox_id=sandbox.id, aud="task-command-router"
        )
        return api_pb2.CommandRouterAccess(url=self.state.url, jwt=jwt)

    def metadata(self, sandbox: Sandbox) -> api_pb2.SandboxHandleMetadata:
        metadata = api_pb2.SandboxHandleMetadata(app_id=sandbox.app_id)
        if sandbox.finished.is_set() and sandbox.result is not None:
            metadata.result.CopyFrom(sandbox.result)
        return metadata

    async def create_sandbox(
        self,
        version: int,
        app_id: str,
        definition: api_pb2.Sandbox,
        tags: "list[api_pb2.SandboxTag]",
        env: dict[str, str],
    ) -> Sandbox:
        """Check a create request, then make and start the sandbox."""
        state = self.state
        state.require_app(app_id)
        if definition.image_id and not state.has_image(definition.image_id):
            # The SDK keeps images it hydrated (e.g. its default image) for the life of the process,
            # so a second emulator in the same process sees ids it never issued. Images are not
            # built anyway, so any image id is accepted.
            log.info("sandbox uses image %s, which this emulator did not record", definition.image_id)
        if definition.HasField("pty_info") and definition.pty_info.enabled:
            raise GRPCError(Status.UNIMPLEMENTED, "sandboxkit's Modal emulator does not support PTY sandboxes")
        name = definition.name if definition.HasField("name") else ""
        if name and any(s.name == name and s.app_id == app_id and s.running for s in state.sandboxes.all()):
            raise GRPCError(Status.ALREADY_EXISTS, f"A running Sandbox named '{name}' already exists in this app")
        if state.sandbox_mode == "process":
            _warn_unenforced(definition)
        sandbox_id = new_sandbox_id(version)
        sandbox = Sandbox(
            sandbox_id=sandbox_id,
            task_id=new_task_id(version),
            version=version,
            app_id=app_id,
            definition=definition,
            env=env,
            tags={t.tag_name: t.tag_value for t in tags},
            runtime=state.runtime(sandbox_id, definition, env),
            created_at=state.sandboxes.next_created_at(),
        )
        try:
            await sandbox.start()
        except BaseException:
            await asyncio.shield(sandbox.finish(api_pb2.GenericResult.GENERIC_STATUS_FAILURE, message="did not start"))
            raise
        state.sandboxes.add(sandbox)
        self._record(sandbox)
        log.info("created sandbox %s (V%d, task %s) in app %s", sandbox.id, version, sandbox.task_id, app_id)
        return sandbox

    def _record(self, sandbox: Sandbox) -> None:
        """Write what the SDK asked for to ``<record_dir>/<sandbox id>.json`` (for tests)."""
        if not self.record_dir:
            return
        d = sandbox.definition
        record: dict[str, Any] = {
            "sandbox_id": sandbox.id,
            "version": sandbox.version,
            "app_id": sandbox.app_id,
            "app_name": self.state.app_name(sandbox.app_id),
            "name": sandbox.name,
            "tags": sandbox.tags,
            "entrypoint_args": list(d.entrypoint_args),
            "image_id": d.image_id,
            "timeout_secs": d.timeout_secs,
            "idle_timeout_secs": d.idle_timeout_secs if d.HasField("idle_timeout_secs") else None,
            "workdir": d.workdir if d.HasField("workdir") else None,
            "env_keys": sorted(sandbox.env),
            "secret_ids": list(d.secret_ids),
            "milli_cpu": d.resources.milli_cpu,
            "milli_cpu_max": d.resources.milli_cpu_max,
            "memory_mb": d.resources.memory_mb,
            "memory_mb_max": d.resources.memory_mb_max,
            "network_access": NetworkAccessType.Name(d.network_access.network_access_type),
            "allowed_cidrs": list(d.network_access.allowed_cidrs),
            "allowed_domains": list(d.network_access.allowed_domains),
            "block_network": d.block_network,
            "regions": list(d.scheduler_placement.regions) if d.HasField("scheduler_placement") else [],
            "volume_mounts": [m.mount_path for m in d.volume_mounts],
            "cloud": d.cloud_provider_str,
        }
        os.makedirs(self.record_dir, exist_ok=True)
        path = os.path.join(self.record_dir, f"{sandbox.id}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.replace(path + ".tmp", path)

    # -- session and objects --------------------------------------------------------------------

    async def ClientHello(self, stream) -> None:
        await stream.recv_message()
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def AuthTokenGet(self, stream) -> None:
        await stream.recv_message()
        token = self.state.minter.mint(self.state.config.token_ttl, aud="control-plane")
        await stream.send_message(api_pb2.AuthTokenGetResponse(token=token))

    async def EnvironmentGetOrCreate(self, stream) -> None:
        request = await stream.recv_message()
        env_id, name = self.state.environment(request.deployment_name)
        settings = api_pb2.EnvironmentSettings(image_builder_version=self.state.config.image_builder_version)
        metadata = api_pb2.EnvironmentMetadata(name=name, settings=settings)
        await stream.send_message(api_pb2.EnvironmentGetOrCreateResponse(environment_id=env_id, metadata=metadata))

    async def AppGetOrCreate(self, stream) -> None:
        request = await stream.recv_message()
        if not request.app_name:
            raise GRPCError(Status.INVALID_ARGUMENT, "an app name is required")
        create = request.object_creation_type != OCT.OBJECT_CREATION_TYPE_UNSPECIFIED
        app_id = self.state.app(request.app_name, request.environment_name, create)
        metadata = api_pb2.AppHandleMetadata(
            app_id=app_id, environment_name=environment_name(request.environment_name), description=request.app_name
        )
        await stream.send_message(api_pb2.AppGetOrCreateResponse(app_id=app_id, handle_metadata=metadata))

    async def SecretGetOrCreate(self, stream) -> None:
        request = await stream.recv_message()
        state = self.state
        kind = request.object_creation_type
        env = environment_name(request.environment_name)
        name = request.deployment_name
        values = dict(request.env_dict)
        if kind in (OCT.OBJECT_CREATION_TYPE_EPHEMERAL, OCT.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP):
            secret_id, name = state.put_secret("", env, values), ""
        elif not name:
            raise GRPCError(Status.INVALID_ARGUMENT, "a secret name is required")
        else:
            existing = state.named_secret(name, env)
            if kind == OCT.OBJECT_CREATION_TYPE_UNSPECIFIED:
                if existing is None:
                    raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' not found in environment '{env}'")
                missing = sorted(set(request.required_keys) - set(existing.values))
                if missing:
                    raise GRPCError(Status.NOT_FOUND, f"Secret '{name}' is missing the keys {', '.join(missing)}")
                secret_id = existing.secret_id
            elif kind == OCT.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS and existing is not None:
                raise GRPCError(Status.ALREADY_EXISTS, f"Secret '{name}' already exists in environment '{env}'")
            elif kind == OCT.OBJECT_CREATION_TYPE_CREATE_IF_MISSING and existing is not None:
                secret_id = existing.secret_id
            else:
                secret_id = state.put_secret(name, env, values)
        metadata = api_pb2.SecretMetadata(name=name, environment_name=env)
        await stream.send_message(api_pb2.SecretGetOrCreateResponse(secret_id=secret_id, metadata=metadata))

    async def ImageGetOrCreate(self, stream) -> None:
        request = await stream.recv_message()
        version = request.builder_version or self.state.config.image_builder_version
        image_id = self.state.image(request.image, version)
        runs_on = (f"the Docker image {self.state.docker_image}" if self.state.sandbox_mode == "container"
                   else "the host's Python")
        log.info(
            "image %s recorded, not built (%d Dockerfile commands ignored; processes run on %s)",
            image_id,
            len(request.image.dockerfile_commands),
            runs_on,
        )
        await stream.send_message(
            api_pb2.ImageGetOrCreateResponse(
                image_id=image_id,
                result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
                metadata=api_pb2.ImageMetadata(image_builder_version=version),
            )
        )

    async def ImageJoinStreaming(self, stream) -> None:
        request = await stream.recv_message()
        if not self.state.has_image(request.image_id):
            raise GRPCError(Status.NOT_FOUND, f"Image {request.image_id} not found")
        await stream.send_message(
            api_pb2.ImageJoinStreamingResponse(
                result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS), eof=True
            )
        )

    # -- sandboxes: create ----------------------------------------------------------------------

    async def SandboxCreateV2(self, stream) -> None:
        request = await stream.recv_message()
        state = self.state
        env: dict[str, str] = dict(request.definition.environment_variables.contents)
        for secret_id in request.definition.secret_ids:
            env.update(state.secret_values(secret_id))
        env.update(state.resolve_sources(list(request.secret_sources)))
        env.update(request.ephemeral_secrets.contents)
        sandbox = await self.create_sandbox(2, request.app_id, request.definition, list(request.tags), env)
        await stream.send_message(
            api_pb2.SandboxCreateV2Response(
                sandbox_id=sandbox.id,
                task_id=sandbox.task_id,
                metadata=self.metadata(sandbox),
                command_router_access=self.router_access(sandbox),
            )
        )

    async def SandboxCreate(self, stream) -> None:
        request = await stream.recv_message()
        env: dict[str, str] = dict(request.definition.environment_variables.contents)
        for secret_id in request.definition.secret_ids:
            env.update(self.state.secret_values(secret_id))
        sandbox = await self.create_sandbox(1, request.app_id, request.definition, list(request.tags), env)
        await stream.send_message(api_pb2.SandboxCreateResponse(sandbox_id=sandbox.id, metadata=self.metadata(sandbox)))

    # -- sandboxes: task and router access ------------------------------------------------------

    async def _get_task_id(self, stream) -> None:
        request = await stream.recv_message()
        sandbox = self.state.sandboxes.get(request.sandbox_id)
        response = api_pb2.SandboxGetTaskIdResponse(task_id=sandbox.task_id)
        if sandbox.result is not None:
            response.task_result.CopyFrom(sandbox.result)
        await stream.send_message(response)

    SandboxGetTaskId = _get_task_id
    SandboxGetTaskIdV2 = _get_task_id

    async def SandboxGetCommandRouterAccess(self, stream) -> None:
        request = await stream.recv_message()
        sandboxes = self.state.sandboxes
        sandbox = sandboxes.get(request.sandbox_id) if request.sandbox_id else sandboxes.by_task(request.task_id)
        access = self.router_access(sandbox)
        await stream.send_message(api_pb2.SandboxGetCommandRouterAccessResponse(url=access.url, jwt=access.jwt))

    async def TaskGetCommandRouterAccess(self, stream) -> None:
        request = await stream.recv_message()
        access = self.router_access(self.state.sandboxes.by_task(request.task_id))
        await stream.send_message(api_pb2.TaskGetCommandRouterAccessResponse(url=access.url, jwt=access.jwt))

    # -- sandboxes: wait, terminate -------------------------------------------------------------

    async def _wait(self, stream) -> None:
        request = await stream.recv_message()
        sandbox = self.state.sandboxes.get(request.sandbox_id)
        result = await sandbox.wait(min(max(request.timeout, 0.0), MAX_WAIT))
        response = api_pb2.SandboxWaitResponse(metadata=self.metadata(sandbox))
        if result is not None:
            response.result.CopyFrom(result)
        await stream.send_message(response)

    SandboxWait = _wait
    SandboxWaitV2 = _wait

    async def _terminate(self, stream) -> None:
        request = await stream.recv_message()
        sandbox = self.state.sandboxes.get(request.sandbox_id)
        response = api_pb2.SandboxTerminateResponse()
        if sandbox.result is not None:
            response.existing_result.CopyFrom(sandbox.result)
        # Shielded: a caller that goes away must not cut the termination short.
        await asyncio.shield(
            sandbox.finish(api_pb2.GenericResult.GENERIC_STATUS_TERMINATED, message="Sandbox terminated")
        )
        await stream.send_message(response)

    SandboxTerminate = _terminate
    SandboxTerminateV2 = _terminate

    # -- sandboxes: listing, tags, names --------------------------------------------------------

    def info(self, sandbox: Sandbox) -> api_pb2.SandboxInfo:
        task_info = api_pb2.TaskInfo(id=sandbox.task_id, sandbox_id=sandbox.id, started_at=sandbox.created_at)
        if sandbox.finished.is_set() and sandbox.result is not None:
            task_info.result.CopyFrom(sandbox.result)
        return api_pb2.SandboxInfo(
            id=sandbox.id,
            created_at=sandbox.created_at,
            app_id=sandbox.app_id,
            name=sandbox.name,
            image_id=sandbox.definition.image_id,
            tags=[api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in sandbox.tags.items()],
            timeout_secs=sandbox.definition.timeout_secs,
            task_info=task_info,
            metadata=self.metadata(sandbox),
        )

    async def _list(self, stream) -> None:
        request = await stream.recv_message()
        wanted = {t.tag_name: t.tag_value for t in request.tags}
        found = [
            s
            for s in self.state.sandboxes.all()
            if (not request.app_id or s.app_id == request.app_id)
            and (request.include_finished or s.running)
            and (not request.before_timestamp or s.created_at < request.before_timestamp)
            and all(s.tags.get(k) == v for k, v in wanted.items())
        ]
        found.sort(key=lambda s: s.created_at, reverse=True)
        await stream.send_message(api_pb2.SandboxListResponse(sandboxes=[self.info(s) for s in found]))

    SandboxList = _list
    SandboxListV2 = _list

    async def _tags_set(self, stream) -> None:
        request = await stream.recv_message()
        sandbox = self.state.sandboxes.get(request.sandbox_id)
        sandbox.tags = {t.tag_name: t.tag_value for t in request.tags}
        await stream.send_message(empty_pb2.Empty())

    SandboxTagsSet = _tags_set
    SandboxTagsSetV2 = _tags_set

    async def _tags_get(self, stream) -> None:
        request = await stream.recv_message()
        sandbox = self.state.sandboxes.get(request.sandbox_id)
        tags = [api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in sandbox.tags.items()]
        await stream.send_message(api_pb2.SandboxTagsGetResponse(tags=tags))

    SandboxTagsGet = _tags_get
    SandboxTagsGetV2 = _tags_get

    async def _from_name(self, stream) -> None:
        request = await stream.recv_message()
        app_id = self.state.app_id_by_name(request.app_name, request.environment_name)
        candidates = sorted(
            (
                s
                for s in self.state.sandboxes.all()
                if s.app_id == app_id and s.name == request.sandbox_name and (s.running or request.include_terminated)
            ),
            key=lambda s: (s.running, s.created_at),
        )
        if app_id is None or not candidates:
            raise GRPCError(
                Status.NOT_FOUND, f"Sandbox '{request.sandbox_name}' not found in app '{request.app_name}'"
            )
        sandbox = candidates[-1]
        await stream.send_message(
            api_pb2.SandboxGetFromNameResponse(sandbox_id=sandbox.id, metadata=self.metadata(sandbox))
        )

    SandboxGetFromName = _from_name
    SandboxGetFromNameV2 = _from_name

    # -- V1 entrypoint stdio --------------------------------------------------------------------

    async def SandboxGetLogs(self, stream) -> None:
        request = await stream.recv_message()
        sandbox = self.state.sandboxes.get(request.sandbox_id)
        fd = request.file_descriptor
        if fd not in (api_pb2.FILE_DESCRIPTOR_STDOUT, api_pb2.FILE_DESCRIPTOR_STDERR):
            raise GRPCError(Status.INVALID_ARGUMENT, f"cannot read file descriptor {fd} of a sandbox")
        buffer = sandbox.entrypoint.output(fd)
        offset = int(request.last_entry_id) if request.last_entry_id.isdigit() else 0
        deadline = time.monotonic() + (request.timeout or MAX_WAIT)
        while True:
            text, end = buffer.text_prefix(offset)
            if text:
                item = api_pb2.TaskLogs(data=text, file_descriptor=fd)
                await stream.send_message(
                    api_pb2.TaskLogsBatch(entry_id=str(end), items=[item], sandbox_id=sandbox.id)
                )
                offset = end
                continue
            if buffer.closed and offset >= len(buffer):
                await stream.send_message(api_pb2.TaskLogsBatch(entry_id=str(offset), eof=True, sandbox_id=sandbox.id))
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await buffer.wait_for_more(max(offset, len(buffer)), remaining)

    async def SandboxStdinWrite(self, stream) -> None:
        request = await stream.recv_message()
        sandbox = self.state.sandboxes.get(request.sandbox_id)
        entry = sandbox.entrypoint
        if request.index > entry.stdin_index:  # an index seen before is a retry
            entry.stdin_index = request.index
            if not sandbox.definition.entrypoint_args and request.input:
                raise GRPCError(Status.FAILED_PRECONDITION, f"Sandbox {sandbox.id} has no entrypoint to read stdin")
            sandbox.touch()
            await entry.write_stdin(entry.stdin_written, request.input, request.eof)
        await stream.send_message(api_pb2.SandboxStdinWriteResponse())


def _warn_unenforced(definition: api_pb2.Sandbox) -> None:
    """Log the requested isolation that local processes cannot provide."""
    asked = []
    kind = definition.network_access.network_access_type
    if definition.block_network or kind in (NetworkAccessType.BLOCKED, NetworkAccessType.ALLOWLIST):
        asked.append("network blocking" if kind != NetworkAccessType.ALLOWLIST else "a network allow-list")
    if definition.resources.milli_cpu or definition.resources.memory_mb:
        asked.append("cpu/memory limits")
    if asked:
        log.warning(
            "sandboxkit's Modal emulator runs sandboxes as local processes: %s not enforced", " and ".join(asked)
        )


complete(ControlPlane, SERVICE)
