//! containerd's shim v2 Task service over the [`Supervisor`]: unpacks each
//! request, calls the supervisor, packs the reply; maps [`TaskError`] to
//! ttrpc codes in one place. Methods berth-shim does not implement answer
//! `UNIMPLEMENTED` naming the method.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim_protos::shim::shim_ttrpc::Task;
use containerd_shim_protos::types::task::{ProcessInfo, Status as ApiStatus};
use ttrpc::{Code, TtrpcContext};

use super::stdio::ExecPaths;
use super::task::{CreateSpec, Status, Supervisor, TaskError};
use crate::checkpoint::CheckpointOptions;
use crate::exit::ExitRecord;
use crate::options::TaskOptions;

/// The Task service of one shim.
pub(crate) struct Service {
    supervisor: Arc<Supervisor>,
    /// Told once, when `Shutdown` lets the shim exit.
    shutdown: Mutex<Option<Sender<()>>>,
}

impl Service {
    /// A service over `supervisor`; `shutdown` is sent to when the shim
    /// should exit.
    pub(crate) fn new(supervisor: Arc<Supervisor>, shutdown: Sender<()>) -> Self {
        Self {
            supervisor,
            shutdown: Mutex::new(Some(shutdown)),
        }
    }
}

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> Self {
        let code = match &e {
            TaskError::NotFound(_) => Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            TaskError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            TaskError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            TaskError::Internal(_) => Code::INTERNAL,
        };
        status(code, e.to_string())
    }
}

fn unimplemented<T>(method: &str) -> ttrpc::Result<T> {
    Err(status(
        Code::UNIMPLEMENTED,
        format!("/containerd.task.v3.Task/{method} is not implemented by berth-shim"),
    ))
}

/// Exec processes are not supported yet: only the init (empty exec id).
fn no_exec(exec_id: &str) -> ttrpc::Result<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(status(
            Code::NOT_FOUND,
            format!("exec process {exec_id:?} not found"),
        ))
    }
}

fn timestamp(at: SystemTime) -> MessageField<Timestamp> {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(since.subsec_nanos()).unwrap_or(0);
    MessageField::some(ts)
}

fn pid(pid: i32) -> u32 {
    u32::try_from(pid).unwrap_or(0)
}

fn exit_fields(exit: &ExitRecord) -> (u32, MessageField<Timestamp>) {
    (exit.exit_status, timestamp(exit.exited_at))
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        if !req.rootfs.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "rootfs mounts are not implemented by berth-shim: \
                 pass a bundle with its rootfs in place",
            ));
        }
        let options = TaskOptions::from_any(req.options.as_ref())
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        // A checkpoint to restore from: the directory of its CRIU images.
        let checkpoint =
            (!req.checkpoint.is_empty()).then(|| std::path::PathBuf::from(&req.checkpoint));
        if let Some(images) = &checkpoint
            && (!matches!(options, TaskOptions::Runc { .. }) || !images.is_absolute())
        {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!(
                    "checkpoint {}: only a runc task restores, from an absolute path",
                    images.display()
                ),
            ));
        }
        // `stdin`: any value gives the init a stdin, which the shim holds
        // and feeds from the attach socket; no path is opened (containerd
        // names a FIFO there).
        let pid = self.supervisor.create(CreateSpec {
            id: req.id,
            bundle: req.bundle.into(),
            stdout: req.stdout,
            stderr: req.stderr,
            stdin: req.stdin,
            terminal: req.terminal,
            options,
            checkpoint,
        })?;
        let mut resp = api::CreateTaskResponse::new();
        resp.pid = self::pid(pid);
        Ok(resp)
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let mut resp = api::StartResponse::new();
        resp.pid = if req.exec_id.is_empty() {
            pid(self.supervisor.start(&req.id)?)
        } else {
            pid(self.supervisor.exec_start(&req.id, &req.exec_id)?)
        };
        Ok(resp)
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        no_exec(&req.exec_id)?;
        let view = self.supervisor.state(&req.id)?;
        let mut resp = api::StateResponse::new();
        resp.id = view.id;
        resp.bundle = view.bundle.to_string_lossy().into_owned();
        resp.pid = pid(view.pid);
        resp.status = EnumOrUnknown::new(match view.status {
            Status::Created => ApiStatus::CREATED,
            Status::Running => ApiStatus::RUNNING,
            Status::Stopped => ApiStatus::STOPPED,
        });
        resp.stdout = view.stdout;
        resp.stderr = view.stderr;
        if let Some(exit) = &view.exit {
            (resp.exit_status, resp.exited_at) = exit_fields(exit);
        }
        Ok(resp)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        if req.exec_id.is_empty() {
            self.supervisor.kill(&req.id, req.signal, req.all)?;
        } else {
            self.supervisor
                .exec_kill(&req.id, &req.exec_id, req.signal)?;
        }
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        let exit = if req.exec_id.is_empty() {
            self.supervisor.wait(&req.id)?
        } else {
            self.supervisor.exec_wait(&req.id, &req.exec_id)?
        };
        let mut resp = api::WaitResponse::new();
        (resp.exit_status, resp.exited_at) = exit_fields(&exit);
        Ok(resp)
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let exit = if req.exec_id.is_empty() {
            self.supervisor.delete(&req.id)?
        } else {
            self.supervisor.exec_delete(&req.id, &req.exec_id)?
        };
        let mut resp = api::DeleteResponse::new();
        resp.pid = pid(exit.pid);
        (resp.exit_status, resp.exited_at) = exit_fields(&exit);
        Ok(resp)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> ttrpc::Result<api::PidsResponse> {
        let mut resp = api::PidsResponse::new();
        resp.processes = self
            .supervisor
            .pids(&req.id)?
            .into_iter()
            .map(|p| {
                let mut info = ProcessInfo::new();
                info.pid = pid(p);
                info
            })
            .collect();
        Ok(resp)
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let mut resp = api::ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = self.supervisor.task_pid().map(pid).unwrap_or(0);
        resp.version = concat!("berth-shim ", env!("CARGO_PKG_VERSION")).to_owned();
        Ok(resp)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        // As containerd's shims: a shim with a task stays.
        if self.supervisor.is_empty() {
            let sender = self
                .shutdown
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(sender) = sender {
                let _ = sender.send(());
            }
        }
        Ok(Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> ttrpc::Result<Empty> {
        unimplemented("Pause")
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        unimplemented("Resume")
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        let options = CheckpointOptions::from_any(req.options.as_ref())
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        // containerd names the image directory in `path`; its runc options
        // may name it too.
        let image_path = match (req.path.as_str(), &options.image_path) {
            ("", Some(path)) => path.clone(),
            ("", None) => {
                return Err(status(
                    Code::INVALID_ARGUMENT,
                    "checkpoint: no image path (the request's path and the options' image_path are empty)",
                ));
            }
            (path, _) => path.into(),
        };
        self.supervisor.checkpoint(&req.id, &image_path, &options)?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .unwrap_or_default();
        if spec.is_empty() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "exec: the process spec is empty".to_string(),
            ));
        }
        let paths = ExecPaths {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        self.supervisor
            .exec_add(&req.id, &req.exec_id, spec, paths)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> ttrpc::Result<Empty> {
        if req.exec_id.is_empty() {
            self.supervisor.resize(&req.id, req.width, req.height)?;
        } else {
            self.supervisor
                .exec_resize(&req.id, &req.exec_id, req.width, req.height)?;
        }
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        // Only stdin can be closed; without `stdin` the call asks nothing.
        if !req.stdin {
            return Ok(Empty::new());
        }
        if req.exec_id.is_empty() {
            self.supervisor.close_stdin(&req.id)?;
        } else {
            self.supervisor.exec_close_stdin(&req.id, &req.exec_id)?;
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        // containerd's convention: the Any holds the JSON of an OCI
        // LinuxResources (type `.../runtime-spec/1/LinuxResources`).
        let resources = req
            .resources
            .as_ref()
            .map(|any| any.value.as_slice())
            .unwrap_or_default();
        self.supervisor.update(&req.id, resources)?;
        Ok(Empty::new())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        _req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        unimplemented("Stats")
    }
}
