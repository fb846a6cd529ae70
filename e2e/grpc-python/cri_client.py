#!/usr/bin/env python3
"""kubelet's CRI call sequence and its error paths, made with Python grpcio.

grpcio is gRPC's C core: a client stack independent of the Rust one
(tonic/h2/hyper) lazarus is built on, and strict like grpc-go (kubelet,
crictl) about where a status may be: `grpc-status` counts only in a HEADERS
frame that ends the stream.

Stubs are generated from the vendored api.proto at start with grpc_tools.
Every step is recorded as {"step", "code", "message", "summary"}: the gRPC
code name, the status message and a summary of the answer, with the ids of
this run's objects replaced by placeholders so two runs (through lazarus and
directly against containerd) can be compared. The run prints one JSON
document on stdout; it exits 0 when it could run the sequence, whatever the
codes were (the caller judges them), and non-zero when it could not.

Usage: cri_client.py --endpoint unix:///path.sock --proto api.proto
       --image IMAGE --pod NAME --namespace NS --log-dir DIR --flavor 1.6|2.1
"""

import argparse
import json
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

MAX_MESSAGE = 16 * 1024 * 1024
E2E_LABEL = "lazarus.dev/e2e"
# A malformed restore annotation (whitespace in a reference): lazarus refuses
# CreateContainer itself (docs/annotations.md); containerd ignores it.
MALFORMED_RESTORE_FROM = "not a reference"
COUNTER = "trap 'exit 143' TERM; i=0; while true; do echo count $i; i=$((i+1)); sleep 1; done"


def load_stubs(proto):
    out = tempfile.mkdtemp(prefix="cri-python-stubs-")
    include = os.path.dirname(os.path.abspath(proto))
    args = ["grpc_tools.protoc", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
            os.path.basename(proto)]
    if protoc.main(args) != 0:
        raise SystemExit(f"grpc_tools.protoc failed on {proto}")
    sys.path.insert(0, out)
    import api_pb2  # noqa: E402  (generated above)
    import api_pb2_grpc  # noqa: E402
    return api_pb2, api_pb2_grpc


class Run:
    def __init__(self, pb, pb_grpc, channel):
        self.pb = pb
        self.runtime = pb_grpc.RuntimeServiceStub(channel)
        self.image = pb_grpc.ImageServiceStub(channel)
        self.steps = []
        self.ids = {}

    def name(self, kind, value):
        """Remembers an id of this run, so messages can name it by kind."""
        if value:
            self.ids[value] = f"<{kind}>"

    def normalize(self, text):
        for value, placeholder in sorted(self.ids.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(value, placeholder)
        return text

    def call(self, step, fn, summarize=lambda r: "", timeout=30):
        """Makes one call; records its code, message and summary."""
        try:
            response = fn(timeout)
            code, message, summary = "OK", "", summarize(response)
        except grpc.RpcError as e:
            code, message, summary, response = e.code().name, e.details() or "", "", None
        self.steps.append({
            "step": step,
            "code": code,
            "message": self.normalize(message),
            "summary": self.normalize(summary),
        })
        return response

    def stream(self, step, fn, timeout):
        """A server-streaming call, read until it ends (normally or with an error)."""
        received = 0
        try:
            for _ in fn(timeout):
                received += 1
            code, message = "OK", ""
        except grpc.RpcError as e:
            code, message = e.code().name, e.details() or ""
        # Events of other objects may come and go: the count is not compared.
        self.steps.append({"step": step, "code": code, "message": self.normalize(message), "summary": ""})
        return received


def pod_config(pb, name, namespace, log_dir, annotations=None):
    uid = f"{os.getpid():x}{time.time_ns():x}"
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
        hostname=name,
        log_directory=log_dir,
        dns_config=pb.DNSConfig(servers=["127.0.0.53"], searches=[f"{namespace}.svc.cluster.local"],
                                options=["ndots:5"]),
        labels={E2E_LABEL: "true", "io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid},
        annotations=annotations or {},
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=f"/lazarus-e2e/pod{uid}",
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=namespaces(pb)),
        ),
    )


def namespaces(pb):
    return pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD)


def container_config(pb, pod, name, image, command):
    meta = pod.metadata
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=0),
        image=pb.ImageSpec(image=image),
        command=command,
        log_path=f"{name}/0.log",
        labels={E2E_LABEL: "true", "io.kubernetes.container.name": name, "io.kubernetes.pod.name": meta.name,
                "io.kubernetes.pod.namespace": meta.namespace, "io.kubernetes.pod.uid": meta.uid},
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(cpu_period=100000, cpu_shares=2, oom_score_adj=1000),
            security_context=pb.LinuxContainerSecurityContext(namespace_options=namespaces(pb)),
        ),
    )


def state_name(pb, enum, value):
    return pb.DESCRIPTOR.enum_types_by_name[enum].values_by_number[value].name


def sequence(run, args):
    pb, rt, img = run.pb, run.runtime, run.image

    # Start-up, as kubelet v1.35 does it.
    run.call("Version", lambda t: rt.Version(pb.VersionRequest(version="0.1.0"), timeout=t),
             lambda r: f"{r.runtime_name} {r.runtime_version} api {r.runtime_api_version}")
    run.call("Status", lambda t: rt.Status(pb.StatusRequest(), timeout=t),
             lambda r: ",".join(f"{c.type}={c.status}" for c in r.status.conditions))
    run.call("RuntimeConfig", lambda t: rt.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=t),
             lambda r: f"cgroup_driver={r.linux.cgroup_driver}")
    # A server stream: UNIMPLEMENTED on containerd 1.6 (Trailers-Only); on 2.1
    # it stays open, here until its deadline.
    run.stream("GetContainerEvents", lambda t: rt.GetContainerEvents(pb.GetEventsRequest(), timeout=t), timeout=1.5)

    # Pod and image.
    pod = pod_config(pb, args.pod, args.namespace, args.log_dir, {"example.com/note": "grpcio sequence"})
    created = run.call("RunPodSandbox", lambda t: rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod), timeout=t),
                       lambda r: "id")
    pod_id = created.pod_sandbox_id if created else ""
    run.name("pod", pod_id)
    run.call("PodSandboxStatus",
             lambda t: rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=t),
             lambda r: f"state={state_name(pb, 'PodSandboxState', r.status.state)} name={r.status.metadata.name}")
    run.call("ListPodSandbox",
             lambda t: rt.ListPodSandbox(pb.ListPodSandboxRequest(
                 filter=pb.PodSandboxFilter(id=pod_id)), timeout=t),
             lambda r: f"{len(r.items)}")
    image = pb.ImageSpec(image=args.image)
    run.call("PullImage", lambda t: img.PullImage(pb.PullImageRequest(image=image, sandbox_config=pod), timeout=t),
             lambda r: r.image_ref)
    run.call("ImageStatus", lambda t: img.ImageStatus(pb.ImageStatusRequest(image=image), timeout=t),
             lambda r: f"{r.image.id} tags={sorted(r.image.repo_tags)}")
    run.call("ImageStatus of an unknown image",
             lambda t: img.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="127.0.0.1:5000/no/such:image")),
                                       timeout=t),
             lambda r: f"present={r.HasField('image')}")
    run.call("ListImages", lambda t: img.ListImages(pb.ListImagesRequest(), timeout=t),
             lambda r: f"has pulled image={any(args.image in i.repo_tags for i in r.images)}")
    run.call("ImageFsInfo", lambda t: img.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=t),
             lambda r: f"filesystems={len(r.image_filesystems)}")

    # Container.
    config = container_config(pb, pod, "counter", args.image, ["/bin/sh", "-c", COUNTER])
    created = run.call("CreateContainer",
                       lambda t: rt.CreateContainer(pb.CreateContainerRequest(
                           pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=t),
                       lambda r: "id")
    container_id = created.container_id if created else ""
    run.name("container", container_id)
    run.call("StartContainer",
             lambda t: rt.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=t))
    status = lambda t: rt.ContainerStatus(pb.ContainerStatusRequest(container_id=container_id), timeout=t)  # noqa: E731
    run.call("ContainerStatus", status,
             lambda r: f"state={state_name(pb, 'ContainerState', r.status.state)} name={r.status.metadata.name}")
    run.call("ListContainers",
             lambda t: rt.ListContainers(pb.ListContainersRequest(
                 filter=pb.ContainerFilter(pod_sandbox_id=pod_id)), timeout=t),
             lambda r: f"{len(r.containers)}")
    run.call("ExecSync",
             lambda t: rt.ExecSync(pb.ExecSyncRequest(container_id=container_id,
                                                      cmd=["/bin/sh", "-c", "echo hello from $(hostname)"],
                                                      timeout=10), timeout=t),
             lambda r: f"exit={r.exit_code} stdout={r.stdout.decode()!r}")
    # A short deadline: DEADLINE_EXCEEDED (containerd 2.1 also resets the stream when it expires).
    run.call("ExecSync past its deadline",
             lambda t: rt.ExecSync(pb.ExecSyncRequest(container_id=container_id, cmd=["sleep", "5"], timeout=10),
                                   timeout=t), timeout=1.0)
    # INVALID_ARGUMENT from the CRI streaming server's request validation.
    run.call("Exec with tty and stderr",
             lambda t: rt.Exec(pb.ExecRequest(container_id=container_id, cmd=["true"], tty=True, stderr=True),
                               timeout=t))
    run.call("ContainerStats",
             lambda t: rt.ContainerStats(pb.ContainerStatsRequest(container_id=container_id), timeout=t),
             lambda r: f"id={r.stats.attributes.id}")

    # A restore lazarus refuses itself (malformed annotation); containerd creates the container.
    refused_pod = pb.PodSandboxConfig()
    refused_pod.CopyFrom(pod)
    refused_pod.annotations["lazarus.dev/restore-from"] = MALFORMED_RESTORE_FROM
    refused = run.call("CreateContainer with a malformed restore-from",
                       lambda t: rt.CreateContainer(pb.CreateContainerRequest(
                           pod_sandbox_id=pod_id, config=container_config(pb, pod, "refused", args.image, ["true"]),
                           sandbox_config=refused_pod), timeout=t),
                       lambda r: "id")
    if refused is not None:
        run.name("refused-container", refused.container_id)
        run.call("RemoveContainer of the not-refused container",
                 lambda t: rt.RemoveContainer(pb.RemoveContainerRequest(container_id=refused.container_id), timeout=t))

    # Stop and removal, then the same calls on what is gone.
    run.call("StopContainer",
             lambda t: rt.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=10), timeout=t))
    run.call("ContainerStatus after stop", status,
             lambda r: f"state={state_name(pb, 'ContainerState', r.status.state)} exit={r.status.exit_code}")
    run.call("RemoveContainer",
             lambda t: rt.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=t))
    run.call("ContainerStatus of a removed container", status)
    run.call("StopContainer of a removed container",
             lambda t: rt.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=0), timeout=t))
    run.call("RemoveContainer of a removed container",
             lambda t: rt.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=t))
    run.call("StartContainer of a removed container",
             lambda t: rt.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=t))
    run.call("StopPodSandbox",
             lambda t: rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=t))
    run.call("RemovePodSandbox",
             lambda t: rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=t))
    run.call("PodSandboxStatus of a removed pod",
             lambda t: rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=t))
    run.call("StopPodSandbox of a removed pod",
             lambda t: rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=t))
    run.call("RemovePodSandbox of a removed pod",
             lambda t: rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=t))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--endpoint", "--proto", "--image", "--pod", "--namespace", "--log-dir", "--flavor"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    pb, pb_grpc = load_stubs(args.proto)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        # `:authority` as grpc-go (kubelet, crictl) sends it on a unix socket. grpcio's own default
        # there is the percent-encoded socket path, which the h2 crate under lazarus's server
        # refuses as a malformed authority (RST_STREAM PROTOCOL_ERROR); see docs/compatibility.md.
        ("grpc.default_authority", "localhost"),
    ]
    with grpc.insecure_channel(args.endpoint, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        run = Run(pb, pb_grpc, channel)
        sequence(run, args)
    json.dump({"grpcio": grpc.__version__, "endpoint": args.endpoint, "steps": run.steps}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
