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

    /// [`Transform::transform`] on input the caller lets it overwrite: a TLS opener decrypts
    /// records where they lie instead of copying them first.
    fn transform_mut(&mut self, input: &mut [u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        self.transform(input, out)
    }

    /// The stream ends (its source reached EOF): appends what closes it on the wire, such as
    /// TLS's close_notify. Called at most once, after the last `transform`.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TransformError> {
        let _ = out;
        Ok(())
    }
}

/// Runs `input` through a chain of transforms in order, reusing `scratch` between stages.
/// The result is appended to `out`.
pub fn run_chain(
    chain: &mut [Box<dyn Transform>],
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), TransformError> {
    match chain.split_first_mut() {
        None => {
            out.extend_from_slice(input);
            Ok(())
        }
        Some((first, rest)) => then(rest, input.len(), out, |o| first.transform(input, o)),
    }
}

/// [`run_chain`] on input the first stage may overwrite ([`Transform::transform_mut`]).
pub fn run_chain_mut(
    chain: &mut [Box<dyn Transform>],
    input: &mut [u8],
    out: &mut Vec<u8>,
) -> Result<(), TransformError> {
    match chain.split_first_mut() {
        None => {
            out.extend_from_slice(input);
            Ok(())
        }
        Some((first, rest)) => {
            let len = input.len();
            then(rest, len, out, |o| first.transform_mut(input, o))
        }
    }
}

/// Runs a chain's first stage (`first`, given where to write) straight into `out` when it is
/// the only one, else into a stage buffer that goes through `rest`.
fn then(
    rest: &mut [Box<dyn Transform>],
    input_len: usize,
    out: &mut Vec<u8>,
    first: impl FnOnce(&mut Vec<u8>) -> Result<(), TransformError>,
) -> Result<(), TransformError> {
    if rest.is_empty() {
        return first(out);
    }
    let mut stage = Vec::with_capacity(input_len + 64);
    first(&mut stage)?;
    run_chain(rest, &stage, out)
}

/// Ends a chain: what each stage's [`Transform::finish`] emits goes through the stages after
/// it. The result is appended to `out`.
pub fn finish_chain(
    chain: &mut [Box<dyn Transform>],
    out: &mut Vec<u8>,
) -> Result<(), TransformError> {
    for i in 0..chain.len() {
        let (stage, rest) = chain[i..].split_first_mut().expect("i < len");
        let mut tail = Vec::new();
        stage.finish(&mut tail)?;
        if !tail.is_empty() {
            run_chain(rest, &tail, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends a tag to every input and a trailer at the end.
    struct Tag(u8);

    impl Transform for Tag {
        fn transform(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
            out.extend_from_slice(input);
            out.push(self.0);
            Ok(())
        }
        fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TransformError> {
            out.extend_from_slice(&[b'!', self.0]);
            Ok(())
        }
    }

    /// Upper-cases in place, and says so.
    struct Upper;

    impl Transform for Upper {
        fn transform(&mut self, _: &[u8], _: &mut Vec<u8>) -> Result<(), TransformError> {
            Err(TransformError("copied".into()))
        }
        fn transform_mut(
            &mut self,
            input: &mut [u8],
            out: &mut Vec<u8>,
        ) -> Result<(), TransformError> {
            input.make_ascii_uppercase();
            out.extend_from_slice(input);
            Ok(())
        }
    }

    #[test]
    fn a_mutable_chain_runs_its_first_stage_in_place() {
        let mut chain: Vec<Box<dyn Transform>> = vec![Box::new(Upper), Box::new(Tag(b'1'))];
        let mut input = *b"ab";
        let mut out = Vec::new();
        run_chain_mut(&mut chain, &mut input, &mut out).unwrap();
        assert_eq!(out, b"AB1");
        assert!(run_chain(&mut chain, b"ab", &mut Vec::new()).is_err());
    }

    #[test]
    fn a_finished_stage_s_trailer_goes_through_the_stages_after_it() {
        let mut chain: Vec<Box<dyn Transform>> = vec![Box::new(Tag(b'1')), Box::new(Tag(b'2'))];
        let mut out = Vec::new();
        finish_chain(&mut chain, &mut out).unwrap();
        // Stage 1's trailer "!1" through stage 2 ("!12"), then stage 2's own "!2".
        assert_eq!(out, b"!12!2");
        let mut empty: Vec<Box<dyn Transform>> = Vec::new();
        finish_chain(&mut empty, &mut out).unwrap();
        assert_eq!(out, b"!12!2");
    }
}
