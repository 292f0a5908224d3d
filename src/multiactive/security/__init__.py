"""Who may talk to a site: certificates (`certs`), TLS material and the link allow-list (`tls`),
tokens for publishers and the admin API (`tokens`)."""
