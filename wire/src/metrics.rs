//! The metrics of the wire: frames and bytes by direction and message type, handshake
//! refusals by reason, and connection errors by kind.

/// Frames sent and received (`direction` in/out, `type` the message).
pub const FRAMES: &str = "cadre_wire_frames_total";
/// Bytes sent and received in frames, length prefixes included.
pub const BYTES: &str = "cadre_wire_bytes_total";
/// Handshakes refused, by `reason` (version, not_cadre, timeout, malformed, identity, ...)
/// and `side` (the end that refused).
pub const HANDSHAKE_REFUSALS: &str = "cadre_wire_handshake_refusals_total";

/// Describes the metrics above to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(FRAMES, "Cluster frames by direction and message type");
    metrics::describe_counter!(
        BYTES,
        metrics::Unit::Bytes,
        "Cluster bytes in frames by direction and message type"
    );
    metrics::describe_counter!(
        HANDSHAKE_REFUSALS,
        "Cluster handshakes refused, by reason and by the side that refused"
    );
}

pub(crate) fn frame(direction: &'static str, kind: &'static str, bytes: usize) {
    metrics::counter!(FRAMES, "direction" => direction, "type" => kind).increment(1);
    metrics::counter!(BYTES, "direction" => direction, "type" => kind).increment(bytes as u64);
}
