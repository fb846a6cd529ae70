//! A recording [`Runtime`] for tests: answers from a script, remembers every
//! call in order (`"PauseTask c1"`), so a test asserts what an engine asked
//! the runtime and in which order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lazarus_proto::v1;
use tonic::Status;

use super::{Call, Runtime};
use crate::containerd_api::CheckpointOptions;

/// The answers of one call: the queued ones in order, then `otherwise`
/// (none scripted: `UNIMPLEMENTED`, which a test sees in the outcome).
#[derive(Debug)]
pub struct Scripted<T> {
    queue: VecDeque<Result<T, Status>>,
    otherwise: Option<Result<T, Status>>,
}

impl<T> Default for Scripted<T> {
    fn default() -> Self {
        Scripted { queue: VecDeque::new(), otherwise: None }
    }
}

impl<T: Clone> Scripted<T> {
    /// The next call answers `answer` (after those queued before).
    pub fn then(&mut self, answer: Result<T, Status>) -> &mut Self {
        self.queue.push_back(answer);
        self
    }

    /// Every call once the queue is empty answers `answer`.
    pub fn always(&mut self, answer: Result<T, Status>) -> &mut Self {
        self.otherwise = Some(answer);
        self
    }

    fn next(&mut self, call: &str) -> Result<T, Status> {
        self.queue
            .pop_front()
            .or_else(|| self.otherwise.clone())
            .unwrap_or_else(|| Err(Status::unimplemented(format!("fake runtime: no answer scripted for {call}"))))
    }
}

/// What a `Tasks.Checkpoint` does besides answering: the files CRIU would leave.
pub type DumpHook = Arc<dyn Fn(&CheckpointOptions) + Send + Sync>;

/// The script, one queue per call.
#[derive(Default)]
#[allow(missing_debug_implementations)] // the hook is a closure
pub struct Script {
    /// `ListContainers`.
    pub list_containers: Scripted<Vec<v1::Container>>,
    /// `ListPodSandbox`.
    pub list_pod_sandboxes: Scripted<Vec<v1::PodSandbox>>,
    /// `ContainerStatus`.
    pub container_status: Scripted<v1::ContainerStatusResponse>,
    /// `PodSandboxStatus`.
    pub pod_sandbox_status: Scripted<v1::PodSandboxStatusResponse>,
    /// `ImageStatus`.
    pub image_status: Scripted<v1::ImageStatusResponse>,
    /// `Version`.
    pub version: Scripted<v1::VersionResponse>,
    /// `RemoveContainer`.
    pub remove_container: Scripted<()>,
    /// `Tasks.Pause`.
    pub pause_task: Scripted<()>,
    /// `Tasks.Resume`.
    pub resume_task: Scripted<()>,
    /// `Tasks.Get`.
    pub task_status: Scripted<i32>,
    /// `Tasks.Checkpoint`.
    pub checkpoint_task: Scripted<()>,
    /// Run on each `Tasks.Checkpoint` before it answers.
    pub dump_hook: Option<DumpHook>,
    /// How long each `Tasks.Checkpoint` takes.
    pub dump_delay: Duration,
}

#[derive(Default)]
struct State {
    calls: Vec<String>,
    script: Script,
}

/// The recording fake runtime.
#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRuntime").field("calls", &self.calls()).finish_non_exhaustive()
    }
}

impl FakeRuntime {
    /// A fake with nothing scripted.
    pub fn new() -> Arc<FakeRuntime> {
        Arc::new(FakeRuntime::default())
    }

    /// Changes the script.
    pub fn script(&self, edit: impl FnOnce(&mut Script)) {
        edit(&mut self.lock().script);
    }

    /// The calls so far, in order: `"<Call> <argument>"`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer<T: Clone>(
        &self,
        call: &str,
        argument: &str,
        pick: impl FnOnce(&mut Script) -> &mut Scripted<T>,
    ) -> Result<T, Status> {
        let mut state = self.lock();
        state.calls.push(format!("{call} {argument}").trim_end().to_owned());
        pick(&mut state.script).next(call)
    }
}

fn ready<T: Send + 'static>(answer: Result<T, Status>) -> Call<'static, T> {
    Box::pin(std::future::ready(answer))
}

impl Runtime for FakeRuntime {
    fn list_containers(&self, filter: v1::ContainerFilter) -> Call<'_, Vec<v1::Container>> {
        ready(self.answer("ListContainers", &filter.id, |s| &mut s.list_containers))
    }

    fn list_pod_sandboxes(&self, _filter: v1::PodSandboxFilter) -> Call<'_, Vec<v1::PodSandbox>> {
        ready(self.answer("ListPodSandbox", "", |s| &mut s.list_pod_sandboxes))
    }

    fn container_status(&self, container_id: &str, _verbose: bool) -> Call<'_, v1::ContainerStatusResponse> {
        ready(self.answer("ContainerStatus", container_id, |s| &mut s.container_status))
    }

    fn pod_sandbox_status(&self, pod_sandbox_id: &str) -> Call<'_, v1::PodSandboxStatusResponse> {
        ready(self.answer("PodSandboxStatus", pod_sandbox_id, |s| &mut s.pod_sandbox_status))
    }

    fn image_status(&self, image: &v1::ImageSpec) -> Call<'_, v1::ImageStatusResponse> {
        ready(self.answer("ImageStatus", &image.image, |s| &mut s.image_status))
    }

    fn version(&self) -> Call<'_, v1::VersionResponse> {
        ready(self.answer("Version", "", |s| &mut s.version))
    }

    fn remove_container(&self, container_id: &str) -> Call<'_, ()> {
        ready(self.answer("RemoveContainer", container_id, |s| &mut s.remove_container))
    }

    fn pause_task(&self, container_id: &str) -> Call<'_, ()> {
        ready(self.answer("PauseTask", container_id, |s| &mut s.pause_task))
    }

    fn resume_task(&self, container_id: &str) -> Call<'_, ()> {
        ready(self.answer("ResumeTask", container_id, |s| &mut s.resume_task))
    }

    fn task_status(&self, container_id: &str) -> Call<'_, i32> {
        ready(self.answer("TaskStatus", container_id, |s| &mut s.task_status))
    }

    fn checkpoint_task(&self, container_id: &str, options: CheckpointOptions) -> Call<'_, ()> {
        let answer = self.answer("CheckpointTask", container_id, |s| &mut s.checkpoint_task);
        let (hook, delay) = {
            let state = self.lock();
            (state.script.dump_hook.clone(), state.script.dump_delay)
        };
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(hook) = hook {
                hook(&options);
            }
            answer
        })
    }
}
