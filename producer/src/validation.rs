//! Order input validation, shared by the form and the JSON API.
//!
//! Invariant: an order reaches the store only with a trimmed name of 1-100
//! characters, a product from the catalogue, and a whole quantity of 1-1000.

use schema::limits::QUANTITY_RANGE;
use serde::Serialize;
use serde_json::Value;

/// Longest customer name, in characters, after trimming (every such name fits
/// its column on both backends: see `schema::limits`).
pub const MAX_NAME_CHARS: usize = schema::limits::CUSTOMER_NAME_CHARS;

/// One field's problem, for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// `customer_name`, `product_id` or `quantity`.
    #[schema(value_type = String)]
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// The raw fields as they arrived; `Err` holds a type problem found while reading them.
#[derive(Debug, Clone, Default)]
pub struct RawOrder {
    /// `customer_name`, if sent.
    pub customer_name: Option<Result<String, String>>,
    /// `product_id`, if sent.
    pub product_id: Option<Result<String, String>>,
    /// `quantity`, if sent.
    pub quantity: Option<Result<i64, String>>,
}

/// A valid order's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidOrder {
    /// Trimmed: 1-100 characters, none of them a control character.
    pub customer_name: String,
    /// Trimmed, and in the catalogue.
    pub product_id: String,
    /// Within `schema::limits::QUANTITY_RANGE`.
    pub quantity: i32,
}

impl RawOrder {
    /// Reads the fields of a form post (all text).
    pub fn from_form(name: Option<&str>, product: Option<&str>, quantity: Option<&str>) -> Self {
        Self {
            customer_name: name.map(|n| Ok(n.to_string())),
            product_id: product.map(|p| Ok(p.to_string())),
            quantity: quantity
                .filter(|q| !q.trim().is_empty())
                .map(|q| q.trim().parse::<i64>().map_err(|_| "quantity must be a whole number".to_string())),
        }
    }

    /// Reads the fields of a JSON object; types are checked here, values in [`validate`].
    pub fn from_json(object: &serde_json::Map<String, Value>) -> Self {
        let text = |field: &str| {
            object.get(field).filter(|v| !v.is_null()).map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(format!("{field} must be a string")),
            })
        };
        Self {
            customer_name: text("customer_name"),
            product_id: text("product_id"),
            quantity: object
                .get("quantity")
                .filter(|v| !v.is_null())
                .map(|v| v.as_i64().ok_or_else(|| "quantity must be a whole number".to_string())),
        }
    }
}

/// Checks every field and reports every problem at once.
pub fn validate(raw: &RawOrder, product_exists: impl Fn(&str) -> bool) -> Result<ValidOrder, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = match &raw.customer_name {
        None => {
            errors.push(FieldError::new("customer_name", "customer name is required"));
            None
        }
        Some(Err(e)) => {
            errors.push(FieldError::new("customer_name", e.clone()));
            None
        }
        Some(Ok(n)) => {
            let trimmed = n.trim();
            let chars = trimmed.chars().count();
            if chars == 0 {
                errors.push(FieldError::new("customer_name", "customer name is required"));
                None
            } else if chars > MAX_NAME_CHARS {
                errors.push(FieldError::new(
                    "customer_name",
                    format!("customer name must be at most {MAX_NAME_CHARS} characters (got {chars})"),
                ));
                None
            } else if trimmed.chars().any(char::is_control) {
                errors.push(FieldError::new("customer_name", "customer name must not contain control characters"));
                None
            } else {
                Some(trimmed.to_string())
            }
        }
    };
    let product = match &raw.product_id {
        None => {
            errors.push(FieldError::new("product_id", "product is required"));
            None
        }
        Some(Err(e)) => {
            errors.push(FieldError::new("product_id", e.clone()));
            None
        }
        Some(Ok(p)) if p.trim().is_empty() => {
            errors.push(FieldError::new("product_id", "product is required"));
            None
        }
        Some(Ok(p)) if !product_exists(p.trim()) => {
            errors.push(FieldError::new("product_id", format!("unknown product {:?}", p.trim())));
            None
        }
        Some(Ok(p)) => Some(p.trim().to_string()),
    };
    let quantity = match &raw.quantity {
        None => {
            errors.push(FieldError::new("quantity", "quantity is required"));
            None
        }
        Some(Err(e)) => {
            errors.push(FieldError::new("quantity", e.clone()));
            None
        }
        Some(Ok(q)) if !QUANTITY_RANGE.contains(q) => {
            errors.push(FieldError::new(
                "quantity",
                format!("quantity must be between {} and {}", QUANTITY_RANGE.start(), QUANTITY_RANGE.end()),
            ));
            None
        }
        Some(Ok(q)) => i32::try_from(*q).ok(),
    };
    match (name, product, quantity) {
        (Some(customer_name), Some(product_id), Some(quantity)) if errors.is_empty() => {
            Ok(ValidOrder { customer_name, product_id, quantity })
        }
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalogue(id: &str) -> bool {
        matches!(id, "P123" | "P200")
    }

    fn fields(errors: &[FieldError]) -> Vec<&'static str> {
        errors.iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_good_form_is_trimmed_and_accepted() {
        let raw = RawOrder::from_form(Some("  Ajay "), Some("P123"), Some(" 2 "));
        let ok = validate(&raw, catalogue).unwrap();
        assert_eq!(ok, ValidOrder { customer_name: "Ajay".into(), product_id: "P123".into(), quantity: 2 });
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let raw = RawOrder::from_form(Some("   "), Some("P999"), Some("abc"));
        let errors = validate(&raw, catalogue).unwrap_err();
        assert_eq!(fields(&errors), vec!["customer_name", "product_id", "quantity"]);
        assert_eq!(errors[2].message, "quantity must be a whole number");
    }

    #[test]
    fn names_are_limited_to_one_hundred_characters() {
        let ok = RawOrder::from_form(Some(&"é".repeat(100)), Some("P123"), Some("1"));
        assert!(validate(&ok, catalogue).is_ok());
        let emoji = RawOrder::from_form(Some(&"😀".repeat(100)), Some("P123"), Some("1"));
        assert!(validate(&emoji, catalogue).is_ok(), "non-BMP characters count one each");
        let long = RawOrder::from_form(Some(&"a".repeat(101)), Some("P123"), Some("1"));
        assert_eq!(fields(&validate(&long, catalogue).unwrap_err()), vec!["customer_name"]);
    }

    #[test]
    fn quantity_bounds_are_inclusive() {
        for (q, ok) in [("0", false), ("1", true), ("1000", true), ("1001", false), ("-3", false), ("2.5", false)] {
            let raw = RawOrder::from_form(Some("A"), Some("P123"), Some(q));
            assert_eq!(validate(&raw, catalogue).is_ok(), ok, "quantity {q}");
        }
    }

    #[test]
    fn json_types_are_checked() {
        let body = json!({"customer_name": 5, "product_id": "P123", "quantity": "2"});
        let errors = validate(&RawOrder::from_json(body.as_object().unwrap()), catalogue).unwrap_err();
        assert_eq!(fields(&errors), vec!["customer_name", "quantity"]);
        assert_eq!(errors[0].message, "customer_name must be a string");
    }

    #[test]
    fn missing_json_fields_are_required() {
        let body = json!({});
        let errors = validate(&RawOrder::from_json(body.as_object().unwrap()), catalogue).unwrap_err();
        assert_eq!(fields(&errors), vec!["customer_name", "product_id", "quantity"]);
        assert!(errors.iter().all(|e| e.message.ends_with("is required")));
    }
}
