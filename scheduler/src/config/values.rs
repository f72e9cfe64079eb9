//! Checked scalar values of the picker config: each refuses a bad value while it is read, so the
//! error carries the field's path (`plugins[2].parameters.freeSlotScore: ...`).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};

/// A mapping read as `T`, or `None` for `null`; anything else is refused as "expected `what`"
/// (the YAML reader's own words for a type mismatch name its parser states, not the config).
pub fn mapping<'de, D, T>(d: D, what: &'static str) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(&'static str, PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Option<T>, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V(what, PhantomData))
}

/// A section of the config (`index:`, `flowControl:`, ...): a mapping, or absent.
pub fn section<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    mapping(d, "a mapping")
}

/// A list of `T`, or `None` for `null`; anything else is refused as "expected `what`".
pub fn list<'de, D, T>(d: D, what: &'static str) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(&'static str, PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Option<Vec<T>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Option<Vec<T>>, A::Error> {
            Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Some)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<Vec<T>>, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<Vec<T>>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V(what, PhantomData))
}

/// A list field of the config: a list, or absent.
pub fn sequence<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    list(d, "a list")
}

/// An integer in `[MIN, MAX]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Int<const MIN: u64, const MAX: u64>(pub u64);

/// An integer of at least `MIN`.
pub type AtLeast<const MIN: u64> = Int<MIN, { u64::MAX }>;

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Int<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MIN: u64, const MAX: u64>;
        impl<const MIN: u64, const MAX: u64> V<MIN, MAX> {
            fn check<E: de::Error>(n: i128) -> Result<Int<MIN, MAX>, E> {
                if n < i128::from(MIN) {
                    Err(E::custom(format!("must be at least {MIN}, got {n}")))
                } else if n > i128::from(MAX) {
                    Err(E::custom(format!("must be at most {MAX}, got {n}")))
                } else {
                    Ok(Int(n as u64))
                }
            }
        }
        impl<const MIN: u64, const MAX: u64> Visitor<'_> for V<MIN, MAX> {
            type Value = Int<MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Self::check(i128::from(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Self::check(i128::from(n))
            }
            fn visit_u128<E: de::Error>(self, n: u128) -> Result<Self::Value, E> {
                Self::check(i128::try_from(n).unwrap_or(i128::MAX))
            }
            fn visit_i128<E: de::Error>(self, n: i128) -> Result<Self::Value, E> {
                Self::check(n)
            }
        }
        d.deserialize_any(V::<MIN, MAX>)
    }
}

/// A request priority (an `i32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priority(pub i32);

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Priority;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer priority")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Priority, E> {
                i32::try_from(n)
                    .map(Priority)
                    .map_err(|_| E::custom(format!("priority {n} is out of range")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Priority, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_any(V)
    }
}

/// A finite number of at least 0 (a weight).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct NonNegative(pub f64);

/// A number in `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Fraction(pub f64);

/// Reads any number as `f64` and checks it with `check`.
struct Number<T>(fn(f64) -> Result<T, String>, PhantomData<T>);

impl<T> Visitor<'_> for Number<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<T, E> {
        (self.0)(x).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        self.visit_f64(n as f64)
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        self.visit_f64(n as f64)
    }
}

impl<'de> Deserialize<'de> for NonNegative {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let check = |x: f64| {
            if x.is_finite() && x >= 0.0 {
                Ok(NonNegative(x))
            } else {
                Err(format!("must be a finite number ≥ 0, got {x}"))
            }
        };
        d.deserialize_any(Number(check, PhantomData))
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let check = |x: f64| {
            if (0.0..=1.0).contains(&x) {
                Ok(Fraction(x))
            } else {
                Err(format!("must be between 0 and 1, got {x}"))
            }
        };
        d.deserialize_any(Number(check, PhantomData))
    }
}

/// A duration written with its unit (`500ms`, `2s`, `1m30s`): see [`crate::duration`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(crate::duration::EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ConfigDuration, E> {
                crate::duration::parse(s)
                    .map(ConfigDuration)
                    .map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ConfigDuration, E> {
                Err(E::invalid_type(Unexpected::Unsigned(n), &self))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ConfigDuration, E> {
                Err(E::invalid_type(Unexpected::Signed(n), &self))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<ConfigDuration, E> {
                Err(E::invalid_type(Unexpected::Float(x), &self))
            }
        }
        d.deserialize_any(V)
    }
}
