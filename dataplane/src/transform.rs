//! Sans-IO byte transforms applied on one side of a relayed pair.

/// A failure inside a transform: the stream is corrupt or was tampered with. The relay closes
/// both ends of the pair when it sees one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(pub String);

/// A one-direction byte transform, fed bytes in arrival order.
///
/// Implementations keep whatever state they need between calls (a cipher's feedback register,
/// a half-received compressed chunk) and never block or do I/O.
pub trait Transform: Send + 'static {
    /// Consumes all of `input` and appends whatever output it makes possible to `out`.
    fn transform(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError>;
}

/// Runs `input` through a chain of transforms in order, reusing `scratch` between stages.
/// The result is appended to `out`.
pub fn run_chain(
    chain: &mut [Box<dyn Transform>],
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), TransformError> {
    match chain {
        [] => {
            out.extend_from_slice(input);
            Ok(())
        }
        [only] => only.transform(input, out),
        [first, rest @ ..] => {
            let mut stage = Vec::with_capacity(input.len() + 64);
            first.transform(input, &mut stage)?;
            run_chain(rest, &stage, out)
        }
    }
}
