//! Pricing: list price less the standard discount, exact decimals.
//!
//! Invariant: money is `Decimal` rounded to cents, never a float.

use rust_decimal::{Decimal, RoundingStrategy};

/// The standard discount, 10 %.
pub const STANDARD_DISCOUNT_PERCENT: i64 = 10;

/// Unit and total price of an order line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priced {
    /// Price per unit after discount, rounded half away from zero to cents.
    pub unit_price: Decimal,
    /// `unit_price × quantity`.
    pub total_price: Decimal,
}

/// Prices `quantity` units of a product listed at `list_price`.
pub fn price(list_price: Decimal, quantity: i32) -> Priced {
    let factor = Decimal::new(100 - STANDARD_DISCOUNT_PERCENT, 2);
    let unit_price = (list_price * factor).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    let total_price = (unit_price * Decimal::from(quantity)).round_dp(2);
    Priced { unit_price: unit_price.round_dp(2), total_price }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn p123_times_two_is_ninety_and_one_eighty() {
        let p = price(d("100.00"), 2);
        assert_eq!(p.unit_price.to_string(), "90.00");
        assert_eq!(p.total_price.to_string(), "180.00");
    }

    #[test]
    fn half_cents_round_away_from_zero() {
        // 0.05 × 0.9 = 0.045 → 0.05
        assert_eq!(price(d("0.05"), 1).unit_price, d("0.05"));
        // 249.99 × 0.9 = 224.991 → 224.99
        assert_eq!(price(d("249.99"), 3).unit_price, d("224.99"));
        assert_eq!(price(d("249.99"), 3).total_price, d("674.97"));
    }

    #[test]
    fn totals_stay_exact_for_large_quantities() {
        let p = price(d("34.95"), 1000);
        assert_eq!(p.unit_price, d("31.46"));
        assert_eq!(p.total_price.to_string(), "31460.00");
    }
}
