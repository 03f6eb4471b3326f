# Stand-in for the Azure Stack Hub training VM: sshd (key-only) and Python with venv.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-server python3 python3-venv python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /run/sshd \
 && useradd --create-home --shell /bin/bash edge \
 && printf '%s\n' 'PasswordAuthentication no' 'KbdInteractiveAuthentication no' 'PermitRootLogin no' \
      'HostKey /etc/ssh/host/ssh_host_ed25519_key' > /etc/ssh/sshd_config.d/edge.conf
# The host key lives on a volume so it survives restarts and stays pinned in the Airflow connection.
CMD ["/bin/sh", "-c", "test -f /etc/ssh/host/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/host/ssh_host_ed25519_key; install -d -m 700 -o edge /home/edge/.ssh; install -m 600 -o edge /etc/ssh/authorized/authorized_keys /home/edge/.ssh/authorized_keys; exec /usr/sbin/sshd -D -e"]
