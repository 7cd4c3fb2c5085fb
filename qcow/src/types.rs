//! Small value types shared by the on-disk codecs and the writer.

/// Identifies one guest state (one future L1 table) of a [`Writer`](crate::Writer): the
/// writer numbers its states 0, 1, ... in the order it creates them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateId(u32);

impl StateId {
    /// The state numbered `index`.
    pub(crate) fn from_index(index: usize) -> StateId {
        StateId(index as u32)
    }

    /// The state's number.
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}
