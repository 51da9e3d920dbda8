//! The check every service's config test runs on its numeric flags: each is
//! walked through 0, -1, its bounds, one past each and a number no integer
//! holds, and must be refused outside its range naming the flag (and the
//! range, when the value is a number of its type), taken inside, and say its
//! range in its help. One copy, so the three services check alike.

use std::ops::RangeInclusive;

/// A flag's range, widened so that one past each end is representable.
pub fn wide<T: Into<i128> + Copy>(range: &RangeInclusive<T>) -> RangeInclusive<i128> {
    (*range.start()).into()..=(*range.end()).into()
}

/// Walks each `(flag, range)` of `C` (the program named `name`) as the module
/// says; panics, naming the flag and value, on the first that misbehaves.
pub fn walk_numeric_flags<C: clap::Parser>(name: &str, flags: &[(&str, RangeInclusive<i128>)]) {
    let command = C::command();
    for (flag, range) in flags {
        let (low, high) = (*range.start(), *range.end());
        for value in [0, -1, low, high, low - 1, high + 1, i128::from(u64::MAX) + 1] {
            let outcome = C::try_parse_from([name, &format!("{flag}={value}")]).map_err(|e| e.to_string());
            match (range.contains(&value), outcome) {
                (true, Ok(_)) => {}
                (true, Err(error)) => panic!("{flag}={value} is in range: {error}"),
                (false, Ok(_)) => panic!("{flag}={value} is taken"),
                (false, Err(error)) => {
                    assert!(error.contains(flag), "{flag}={value}: {error}");
                    let a_number_of_its_type = value >= 0 && value <= i128::from(i32::MAX);
                    assert!(
                        !a_number_of_its_type || error.contains(&format!("{low}..={high}")),
                        "{flag}={value}: {error}"
                    );
                }
            }
        }
        let arg = command.get_arguments().find(|a| a.get_long() == flag.strip_prefix("--")).expect("a flag");
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        assert!(help.contains(&format!("{low}-{high}")), "{flag}'s help says its range: {help}");
    }
}
