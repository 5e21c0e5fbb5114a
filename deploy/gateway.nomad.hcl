# Nomad job for the space gateway, one allocation per node, behind a TCP+UDP load
# balancer (deploy/lb-nginx.conf) that spaces dial as their agent endpoint.
#
#   nomad var put space-gateway/tls cert=@fullchain.pem key=@privkey.pem
#   nomad var put space-gateway/auth verify_key=@verify-key.pem
#   nomad job run deploy/gateway.nomad.hcl
#
# The image is deploy/Containerfile. Checked by gateway/tests/deploy_files.rs: the file
# is parsed with python-hcl2 and its structure asserted, and the real gateway is started
# with this task's arguments, environment and rendered gateway.toml (it must serve the
# certificate, answer /readyz on the admin address, survive SIGHUP, stop on SIGTERM).

job "space-gateway" {
  type        = "service"
  datacenters = ["*"]

  # Rolling update, one gateway at a time. A stopped gateway sends GoAway and its
  # agents reconnect through the load balancer to the others.
  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "30s"
    healthy_deadline  = "5m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "gateway" {
    # One gateway for now. More than one needs gateway-to-gateway forwarding (the etcd
    # registry, docs/configuration.md "Not yet"): until then a user request that the
    # load balancer sends to a gateway not holding the space's link gets 503.
    count = 1

    # Static ports: the load balancer targets the same port on every node.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      # One label covers both protocols. Nomad reserves a port number, not a protocol,
      # and its docker driver publishes every mapped port as both /tcp and /udp. The
      # task uses the host's network stack (network_mode below), so the gateway binds
      # udp/7443 (QUIC) and tcp/7443 (TLS + yamux) itself.
      port "agent" {
        static = 7443
      }
      # Users' HTTPS and wss, TLS terminated by the gateway.
      port "https" {
        static = 8443
      }
      # /healthz, /readyz, /metrics: reach it from the Nomad client and Prometheus only.
      port "admin" {
        static = 9090
      }
    }

    # Restart in place a few times, then let the scheduler place it elsewhere.
    restart {
      attempts = 3
      interval = "5m"
      delay    = "10s"
      mode     = "fail"
    }

    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      max_delay      = "10m"
      unlimited      = true
    }

    service {
      name     = "space-gateway"
      port     = "https"
      provider = "consul"
      tags     = ["https"]

      # Ready: listeners bound, keys loaded. The admin listener serves it (being built:
      # until it lands this check fails and the deployment does not go healthy).
      check {
        name     = "readyz"
        type     = "http"
        port     = "admin"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"

        check_restart {
          limit = 3
          grace = "30s"
        }
      }
    }

    service {
      name     = "space-gateway-agents"
      port     = "agent"
      provider = "consul"
      tags     = ["quic", "tls"]
    }

    service {
      name     = "space-gateway-metrics"
      port     = "admin"
      provider = "consul"
      tags     = ["prometheus"]
    }

    task "gateway" {
      driver = "docker"

      config {
        image        = "registry.example.com/space-gateway:0.1.0"
        network_mode = "host"
        # ENTRYPOINT is the gateway binary (deploy/Containerfile).
        args = ["--config", "/local/gateway.toml", "run"]
        ulimit {
          nofile = "1048576:1048576"
        }
      }

      # SIGTERM drains: GoAway to every agent, then open streams get up to a deadline.
      # kill_timeout is that budget before SIGKILL; shutdown_delay first takes the
      # gateway out of service discovery so the load balancer stops sending to it.
      kill_signal    = "SIGTERM"
      kill_timeout   = "60s"
      shutdown_delay = "5s"

      env {
        # Flags > environment > gateway.toml: the listeners and the domain are here.
        GATEWAY_AGENT_LISTEN  = "0.0.0.0:7443"
        GATEWAY_PUBLIC_LISTEN = "0.0.0.0:8443"
        GATEWAY_DOMAIN        = "spaces.example.com"
        # The control plane's Ed25519 public key, rendered by a template below.
        GATEWAY_PUBLIC_KEY = "/secrets/verify-key.pem"
        # The admin listener on the node's own address (not 0.0.0.0): the gateway reads
        # this once the admin listener lands; until then it ignores it.
        GATEWAY_ADMIN_LISTEN = "${NOMAD_ADDR_admin}"
        RUST_LOG             = "info"
      }

      # Settings that have no environment variable: the certificate and key paths.
      # Every key must exist in gateway/src/config.rs (unknown keys stop the gateway).
      # SIGHUP re-reads it (certificate paths, allow_public_ports) without dropping links.
      template {
        destination   = "local/gateway.toml"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data        = <<-EOT
          [public]
          cert = "/secrets/tls.crt.pem"
          key = "/secrets/tls.key.pem"

          [auth]
          allow_public_ports = true
        EOT
      }

      # Wildcard certificate for DOMAIN and *.DOMAIN. The agent listener presents it too.
      # uid/gid: the image's non-root user (deploy/Containerfile), so 0400 is readable.
      # A renewed certificate is picked up on SIGHUP, links stay up. Nomad renders the
      # two files one after the other, each with its own SIGHUP: after the second the
      # matching pair is in service.
      template {
        destination   = "secrets/tls.crt.pem"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
        data        = "{{ with nomadVar \"space-gateway/tls\" }}{{ .cert }}{{ end }}"
      }

      template {
        destination   = "secrets/tls.key.pem"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
        data        = "{{ with nomadVar \"space-gateway/tls\" }}{{ .key }}{{ end }}"
      }

      # The token key is read at start only: a new one takes a restart.
      template {
        destination = "secrets/verify-key.pem"
        change_mode = "restart"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
        data        = "{{ with nomadVar \"space-gateway/auth\" }}{{ .verify_key }}{{ end }}"
      }

      # Idle links cost little memory; streams relay through bounded buffers. Measure
      # with loadtest/ and adjust.
      resources {
        cpu        = 2000
        memory     = 1024
        memory_max = 2048
      }
    }
  }
}
