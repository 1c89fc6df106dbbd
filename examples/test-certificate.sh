#!/bin/sh
# A self-signed certificate to try TLS with (not for production): key.pem and
# cert.pem for @HOST@, valid for 30 days; cert.pem is also the CA file the
# senders trust. Then: twistd -n logplex --syslog ssl:6514:privateKey=key.pem:certKey=cert.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -nodes -days 30 \
    -subj "/CN=@HOST@" -addext "subjectAltName=DNS:@HOST@" -keyout key.pem -out cert.pem
