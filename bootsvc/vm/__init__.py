"""``bootsvc vm``: diskless QEMU machines booting from bootsvc on a private
network (a network namespace with a bridge and one tap per machine), their
serial consoles followed, and one timeline per machine printed."""
