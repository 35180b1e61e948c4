//! Vectors kept from one event to the next on each thread: every event needs the same few, of the same lengths
//! (its captured input, its output slots), and each one made and freed per event was an allocation whose memory
//! was cold, the allocator handing out its blocks in turn rather than the one just freed.

use std::cell::Cell;
use std::thread::LocalKey;

/// A vector of `T`s borrowing from one event, kept empty between events as a vector of `S`s, the same type
/// borrowing for `'static`.
pub(crate) struct Spare<S: 'static>(Cell<Vec<S>>);

impl<S> Spare<S> {
    pub(crate) const fn new() -> Self {
        Spare(Cell::new(Vec::new()))
    }
}

/// The spare vector of `key`, empty, as a vector of `T`s with `len` of `fill()` (a new vector when another is
/// in use on this thread).
pub(crate) fn take<S, T>(key: &'static LocalKey<Spare<S>>, len: usize, fill: impl FnMut() -> T) -> Vec<T> {
    let kept = key.try_with(|spare| spare.0.take()).unwrap_or_default();
    let mut vec: Vec<T> = relabel(kept);
    vec.resize_with(len, fill);
    vec
}

/// Gives `vec` back to `key`, emptied, for the next event.
pub(crate) fn give_back<S, T>(key: &'static LocalKey<Spare<S>>, vec: Vec<T>) {
    let emptied = relabel(vec);
    // During the thread's exit the spare may be gone: the vector is then freed, as it would have been anyway.
    let _ = key.try_with(|spare| spare.0.set(emptied));
}

/// `vec`, emptied, as a vector of another element type with its allocation: collecting an emptied vector's own
/// iterator reuses its buffer when the two types have one layout, as a type and itself borrowing for another
/// lifetime do. (If the standard library ever stopped doing so, this would allocate, nothing worse.)
fn relabel<T, U>(mut vec: Vec<T>) -> Vec<U> {
    vec.clear();
    vec.into_iter().filter_map(|_| None).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static WORDS: Spare<&'static str> = const { Spare::new() };
    }

    #[test]
    fn a_vector_given_back_is_taken_again_with_its_allocation() {
        let text = String::from("one two");
        let mut words: Vec<&str> = take(&WORDS, 0, || "");
        words.extend(text.split(' '));
        let (pointer, capacity) = (words.as_ptr() as usize, words.capacity());
        give_back(&WORDS, words);
        drop(text);
        let again: Vec<&str> = take(&WORDS, 2, || "-");
        assert_eq!(again, ["-", "-"], "emptied, then filled to the length asked");
        assert_eq!((again.as_ptr() as usize, again.capacity()), (pointer, capacity));
        // Taken while the spare is out, a second vector is a new one.
        let other: Vec<&str> = take(&WORDS, 1, || "x");
        assert_eq!(other, ["x"]);
        give_back(&WORDS, again);
        give_back(&WORDS, other);
    }
}
