//! The seed: the shop's named users and its products (the checkout's prices, with names,
//! descriptions and the stock a fresh shop starts with).

use std::collections::BTreeMap;

use oncely_example_checkout::checkout::PRICES;

/// A named user (there are no passwords: `X-Shop-User` says who is asking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    /// The id sent in `X-Shop-User`.
    pub id: &'static str,
    /// The display name.
    pub name: &'static str,
    /// The e-mail address the seed profile starts with.
    pub email: &'static str,
    /// The seed profile's one address.
    pub address: &'static str,
}

/// The three users of the seed.
pub const USERS: [User; 3] = [
    User {
        id: "ada",
        name: "Ada Lovelace",
        email: "ada@example.com",
        address: "12 St James's Square, London",
    },
    User {
        id: "grace",
        name: "Grace Hopper",
        email: "grace@example.com",
        address: "1 Navy Yard, Arlington",
    },
    User {
        id: "linus",
        name: "Linus Torvalds",
        email: "linus@example.com",
        address: "Kalevankatu 3, Helsinki",
    },
];

/// The user with this id.
pub fn user(id: &str) -> Option<&'static User> {
    USERS.iter().find(|u| u.id == id)
}

/// A product as the catalog describes it (its stock is the inventory's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Product {
    /// The checkout's sku.
    pub id: &'static str,
    /// The display name.
    pub name: &'static str,
    /// A line about it.
    pub description: &'static str,
    /// The price in cents, from the checkout's price list.
    pub price_cents: u64,
    /// Units a fresh shop has.
    pub seed_stock: u32,
}

/// Names, descriptions and seed stock per sku; the prices come from [`PRICES`].
const DESCRIPTIONS: &[(&str, &str, &str, u32)] = &[
    ("tea", "Tea", "Loose-leaf black tea from Assam, 100 g", 12),
    ("coffee", "Coffee", "Whole beans, medium roast, 250 g", 20),
    ("cake", "Cake", "A slice of lemon drizzle cake", 6),
];

/// Every product, in the price list's order. A sku without a description still sells,
/// under its sku as name.
pub fn products() -> Vec<Product> {
    PRICES
        .iter()
        .map(|(sku, price)| {
            let (name, description, stock) = DESCRIPTIONS
                .iter()
                .find(|(id, ..)| id == sku)
                .map_or((*sku, "", 10), |(_, n, d, s)| (*n, *d, *s));
            Product {
                id: sku,
                name,
                description,
                price_cents: *price,
                seed_stock: stock,
            }
        })
        .collect()
}

/// The product with this id.
pub fn product(id: &str) -> Option<Product> {
    products().into_iter().find(|p| p.id == id)
}

/// The stock a fresh inventory starts with.
pub fn seed_stock() -> BTreeMap<String, u32> {
    products()
        .into_iter()
        .map(|p| (p.id.to_owned(), p.seed_stock))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_priced_sku_is_a_product_with_a_description() {
        let all = products();
        assert_eq!(all.len(), PRICES.len());
        assert!(all.iter().all(|p| !p.description.is_empty()), "{all:?}");
        assert_eq!(product("tea").map(|p| p.price_cents), Some(450));
    }
}
