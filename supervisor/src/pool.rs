//! A dynamic pool of one child type (OTP's `simple_one_for_one`): per-job or per-request actors
//! started at run time from one template.
//!
//! The pool is a one_for_one supervisor whose children are all made by the same factory from
//! the arguments given to [`Pool::spawn`]. Every child's `actor` metric label is the pool's id,
//! never the per-instance id, so a pool of a million children is still one metric series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};

use crate::context::SupervisedContext;
use crate::error::SupervisorError;
use crate::spec::{ChildLimit, Restart, Shutdown, SupervisorSpec, WorkerSpec};
use crate::supervisor::{ChildCounts, SupervisorRef};

/// A handle to a dynamic pool; cheap to clone.
pub struct Pool<A: Actor<Context = SupervisedContext<A>>, Args> {
    id: Arc<str>,
    sup: SupervisorRef,
    factory: Arc<dyn Fn(Args) -> A + Send + Sync>,
    next: Arc<AtomicU64>,
    restart: Restart,
    shutdown: Shutdown,
    limit: Option<ChildLimit>,
    mailbox: usize,
}

impl<A: Actor<Context = SupervisedContext<A>>, Args> Clone for Pool<A, Args> {
    fn clone(&self) -> Self {
        Pool {
            id: Arc::clone(&self.id),
            sup: self.sup.clone(),
            factory: Arc::clone(&self.factory),
            next: Arc::clone(&self.next),
            restart: self.restart,
            shutdown: self.shutdown,
            limit: self.limit,
            mailbox: self.mailbox,
        }
    }
}

impl<A, Args> Pool<A, Args>
where
    A: Actor<Context = SupervisedContext<A>>,
    Args: Clone + Send + 'static,
{
    /// A pool named `id` whose children `factory` makes from their arguments. Returns the
    /// handle and the pool's supervisor spec: start it as a root (`spec.start(id)`) or put it in
    /// a tree (`spec.into_child(id)`); tune its intensity on the spec. Children default to
    /// `Temporary` (a per-job actor that ends is done), shutdown `Timeout(5 s)`.
    pub fn new(
        id: &str,
        factory: impl Fn(Args) -> A + Send + Sync + 'static,
    ) -> (Self, SupervisorSpec) {
        let spec = SupervisorSpec::one_for_one();
        let pool = Pool {
            id: Arc::from(id),
            sup: spec.handle(),
            factory: Arc::new(factory),
            next: Arc::new(AtomicU64::new(1)),
            restart: Restart::Temporary,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
            limit: None,
            mailbox: WorkerSpec::<A>::DEFAULT_MAILBOX,
        };
        (pool, spec)
    }

    /// Sets the restart type of the children spawned from now on.
    pub fn child_restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets the shutdown of the children spawned from now on.
    pub fn child_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Disables a child after more than `intensity` restarts within `period`.
    pub fn child_limit(mut self, intensity: u32, period: Duration) -> Self {
        self.limit = Some(ChildLimit { intensity, period });
        self
    }

    /// Sets the mailbox capacity of the children spawned from now on.
    pub fn child_mailbox(mut self, capacity: usize) -> Self {
        self.mailbox = capacity.max(1);
        self
    }

    /// Starts a child made from `args`; returns its id and address.
    pub async fn spawn(&self, args: Args) -> Result<(String, Addr<A>), SupervisorError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.id);
        let factory = Arc::clone(&self.factory);
        let mut spec = WorkerSpec::new(id.clone(), move || factory(args.clone()))
            .restart(self.restart)
            .shutdown(self.shutdown)
            .mailbox_capacity(self.mailbox)
            .metric_label(Arc::clone(&self.id));
        if let Some(limit) = self.limit {
            spec = spec.limit(limit.intensity, limit.period);
        }
        let addr = spec.addr();
        self.sup.start_child(spec).await?;
        Ok((id, addr))
    }

    /// Stops a child and removes it (whatever its restart type).
    pub async fn terminate(&self, id: &str) -> Result<(), SupervisorError> {
        self.sup.terminate_child(id).await?;
        match self.sup.delete_child(id).await {
            // A temporary child is removed by terminate already.
            Err(SupervisorError::NoSuchChild { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Counts of the pool's children.
    pub async fn count(&self) -> Result<ChildCounts, SupervisorError> {
        self.sup.count_children().await
    }

    /// The pool's supervisor.
    pub fn supervisor(&self) -> &SupervisorRef {
        &self.sup
    }
}
