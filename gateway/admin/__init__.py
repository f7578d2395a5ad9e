"""The admin listener: keys and memberships API, its OpenAPI document, health and metrics.
May import every capability below it and the wiring's app keys; nothing imports admin but app."""
