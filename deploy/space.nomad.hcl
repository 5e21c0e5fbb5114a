# Nomad job for one space: an Ubuntu desktop container whose agent links it to the
# gateway. The control plane writes one such job per space; the values that differ per
# space are the job id ("space-alice-demo"), KNOT_SPACEID, KNOT_USER, the CSI volume
# id and the Nomad variable holding the agent token.
#
# Checked by gateway/tests/deploy_files.rs: parsed with python-hcl2 and its structure
# asserted (volume, health check, the KNOT_* variables, each one that agent-link reads).

job "space-alice-demo" {
  type        = "service"
  datacenters = ["*"]

  meta {
    space_id = "0b6c7f1e-3a5d-4e8f-9c21-7d4a2b9e6f10"
    user     = "alice"
  }

  group "space" {
    count = 1

    # The user's home, kept across restarts and moves: a CSI volume registered
    # beforehand (`nomad volume create`), one writer at a time.
    volume "home" {
      type            = "csi"
      source          = "home-alice-demo"
      read_only       = false
      attachment_mode = "file-system"
      access_mode     = "single-node-writer"
    }

    network {
      mode = "bridge"
      # Only the health check comes in: users reach the space through the gateway,
      # over the link the agent dials out. Nothing else is published.
      port "agent" {
        to = 3000
      }
    }

    restart {
      attempts = 5
      interval = "10m"
      delay    = "15s"
      mode     = "delay"
    }

    service {
      name     = "space-alice-demo"
      port     = "agent"
      provider = "consul"

      # The agent serves HTTPS /ping on its own port, 3000 by default
      # (KNOT_AGENT_PING_LISTEN), with a self-signed certificate: no verification.
      check {
        name            = "agent-ping"
        type            = "http"
        protocol        = "https"
        tls_skip_verify = true
        port            = "agent"
        path            = "/ping"
        interval        = "15s"
        timeout         = "3s"

        check_restart {
          limit = 4
          grace = "2m"
        }
      }
    }

    task "desktop" {
      driver = "docker"

      # The image must contain agent-link (the agent, /usr/local/bin/agent-link from
      # this repository's release build) and start it as a process next to sshd, the
      # VNC desktop (Xvfb + x11vnc + websockify on KNOT_VNC_HTTP_PORT) and code-server,
      # under its process supervisor (s6, supervisord, ...). agent-link runs as root:
      # it runs /etc/knot-startup.d/ as root, then ~/.knot-startup.d/ as KNOT_USER.
      # It reads its settings from the KNOT_* environment below.
      config {
        image    = "registry.example.com/spaces/ubuntu-desktop:24.04"
        hostname = "demo"
        shm_size = 2147483648 # the desktop's browsers need more than 64 MiB of /dev/shm
      }

      volume_mount {
        volume      = "home"
        destination = "/home"
        read_only   = false
      }

      env {
        # The load balancer in front of the gateways (deploy/lb-nginx.conf): QUIC on
        # udp/7443, TLS + yamux on tcp/7443 when UDP is blocked.
        KNOT_AGENT_ENDPOINT = "gateway.spaces.example.com:7443"
        # Informational: the gateway takes the identity from the token.
        KNOT_SPACEID = "${NOMAD_META_space_id}"
        KNOT_USER    = "${NOMAD_META_user}"
        # Local ports the agent offers through the gateway.
        KNOT_SSH_PORT         = "22"
        KNOT_HTTP_PORT        = "8080"
        KNOT_CODE_SERVER_PORT = "49374"
        KNOT_VNC_HTTP_PORT    = "6080"
        # The gateway's certificate is publicly issued: the system CA bundle verifies it.
        KNOT_AGENT_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
      }

      # The agent token (audience "agent", signed by the control plane), kept out of
      # the job specification: rendered from a Nomad variable into the environment.
      template {
        destination = "secrets/agent.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          KNOT_AGENT_TOKEN={{ with nomadVar "spaces/alice-demo" }}{{ .agent_token }}{{ end }}
        EOT
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu        = 2000
        memory     = 4096
        memory_max = 8192
      }
    }
  }
}
