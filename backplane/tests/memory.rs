//! The shared backplane behaviour, run against the in-process implementation, directly and
//! through [`AnyBackplane`] (which the gateway uses).

#[macro_use]
mod common;

use backplane::{AnyBackplane, MemoryBackplane};

/// Two "pods" in one process share one instance.
async fn pods() -> ((), MemoryBackplane, MemoryBackplane) {
    let bp = MemoryBackplane::new();
    ((), bp.clone(), bp)
}

async fn any_pods() -> ((), AnyBackplane, AnyBackplane) {
    let bp = AnyBackplane::from(MemoryBackplane::new());
    ((), bp.clone(), bp)
}

conformance_suite!(memory, crate::pods);
conformance_suite!(any_memory, crate::any_pods);
