//! Which method is valid in which session state (RFC 2326 Appendix A.2), as one table.

use crate::message::Method;

/// Server-side session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// No SETUP yet.
    Init,
    /// Set up, not playing or recording.
    Ready,
    /// PLAY accepted.
    Playing,
    /// RECORD accepted.
    Recording,
}

/// What a method does in a state: the next state, or the status refusing it.
pub fn transition(state: State, method: &Method) -> Result<State, u16> {
    use Method as M;
    use State as S;
    match (state, method) {
        (_, M::Options | M::Describe | M::GetParameter | M::SetParameter) => Ok(state),
        (S::Init, M::Announce) => Ok(S::Init),
        (_, M::Announce) => Err(455),
        (S::Init | S::Ready, M::Setup) => Ok(S::Ready),
        (S::Playing | S::Recording, M::Setup) => Err(455),
        (S::Ready | S::Playing, M::Play) => Ok(S::Playing),
        (S::Ready | S::Recording, M::Record) => Ok(S::Recording),
        (S::Playing | S::Ready, M::Pause) => Ok(S::Ready),
        // RFC 2326 10.6 lets a server pause a recording; ferrocast cannot make a publisher
        // hold its media, so it refuses rather than answer 200 and go on ingesting.
        (S::Recording, M::Pause) => Err(455),
        (_, M::Teardown) => Ok(S::Init),
        (S::Init, M::Play | M::Record | M::Pause) => Err(455),
        (S::Playing, M::Record) | (S::Recording, M::Play) => Err(455),
        (_, M::Redirect) => Err(405),
        (_, M::Other(_)) => Err(501),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Method as M;
    use State as S;

    #[test]
    fn every_state_and_method() {
        let methods = [
            M::Options,
            M::Describe,
            M::Announce,
            M::Setup,
            M::Play,
            M::Pause,
            M::Record,
            M::Teardown,
            M::GetParameter,
            M::SetParameter,
            M::Redirect,
            M::Other("FOO".into()),
        ];
        #[rustfmt::skip]
        let expect: [(State, [Result<State, u16>; 12]); 4] = [
            (S::Init,      [Ok(S::Init), Ok(S::Init), Ok(S::Init), Ok(S::Ready), Err(455), Err(455), Err(455), Ok(S::Init), Ok(S::Init), Ok(S::Init), Err(405), Err(501)]),
            (S::Ready,     [Ok(S::Ready), Ok(S::Ready), Err(455), Ok(S::Ready), Ok(S::Playing), Ok(S::Ready), Ok(S::Recording), Ok(S::Init), Ok(S::Ready), Ok(S::Ready), Err(405), Err(501)]),
            (S::Playing,   [Ok(S::Playing), Ok(S::Playing), Err(455), Err(455), Ok(S::Playing), Ok(S::Ready), Err(455), Ok(S::Init), Ok(S::Playing), Ok(S::Playing), Err(405), Err(501)]),
            (S::Recording, [Ok(S::Recording), Ok(S::Recording), Err(455), Err(455), Err(455), Err(455), Ok(S::Recording), Ok(S::Init), Ok(S::Recording), Ok(S::Recording), Err(405), Err(501)]),
        ];
        for (state, row) in expect {
            for (m, want) in methods.iter().zip(row) {
                assert_eq!(transition(state, m), want, "{state:?} {m:?}");
            }
        }
    }
}
