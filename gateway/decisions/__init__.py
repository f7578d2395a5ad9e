"""Decision endpoints: nginx, Envoy, Traefik and Caddy ask the gateway; the same decision as
a proxied request. May import edge and everything below it; nothing imports it but app."""
