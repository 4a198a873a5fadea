//! Panic capture helpers: turning a panic payload into a message, and an optional process-wide
//! panic hook that records where the panic happened.
//!
//! Without the hook, a failure event carries the panic's message and the default hook prints it
//! to stderr as well. With [`install_panic_hook`], the hook records `message at file:line` for the
//! supervisor to put in its structured event, and stays quiet for panics that a supervised
//! actor's cell is about to catch (they are logged as one structured event instead); other panics
//! go to the previous hook unchanged.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::sync::Once;

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    static IN_CELL: Cell<bool> = const { Cell::new(false) };
}

/// Installs the supervisor's panic hook once per process (later calls do nothing).
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = payload_str(info.payload()).unwrap_or("non-string panic payload");
            let text = match info.location() {
                Some(loc) => format!("{message} at {}:{}", loc.file(), loc.line()),
                None => message.to_owned(),
            };
            LAST_PANIC.with(|slot| *slot.borrow_mut() = Some(text));
            if !IN_CELL.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

fn payload_str(payload: &(dyn Any + Send)) -> Option<&str> {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        Some(s)
    } else {
        payload.downcast_ref::<String>().map(String::as_str)
    }
}

/// The message of a caught panic: the hook's `message at file:line` when the hook recorded it,
/// else the payload's text.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    let recorded = LAST_PANIC.with(|slot| slot.borrow_mut().take());
    match (recorded, payload_str(payload)) {
        (Some(text), Some(msg)) if text.starts_with(msg) => text,
        (_, Some(msg)) => msg.to_owned(),
        (Some(text), None) => text,
        (None, None) => "non-string panic payload".to_owned(),
    }
}

/// The last panic the hook recorded on this thread, if any (used when a panic happened in a task
/// that is not ours, such as the task actix spawns for a `ResponseFuture`).
pub(crate) fn take_last_panic() -> Option<String> {
    LAST_PANIC.with(|slot| slot.borrow_mut().take())
}

/// Marks the current thread as running a supervised cell while the guard lives.
pub(crate) struct InCell {
    was: bool,
}

impl InCell {
    pub(crate) fn enter() -> Self {
        InCell {
            was: IN_CELL.with(|c| c.replace(true)),
        }
    }
}

impl Drop for InCell {
    fn drop(&mut self) {
        let was = self.was;
        IN_CELL.with(|c| c.set(was));
    }
}
