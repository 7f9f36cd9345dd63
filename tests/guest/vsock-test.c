// vsock-test: a tiny static AF_VSOCK tool for test guests (busybox has none).
//   vsock-test cid                    prints the guest's own CID
//   vsock-test listen PORT            accepts one connection, prints "GOT <first line>",
//                                     answers "pong-from-guest\n" and exits
//   vsock-test connect CID PORT MSG   sends "MSG\n", prints the first line of the answer
// Exit status 0 on success, 1 with a message on stderr otherwise. Built static by the e2e tests.
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int die(const char* what) {
  perror(what);
  return 1;
}

// Reads up to the first newline (or EOF) into buf; returns its length.
static size_t read_line(int fd, char* buf, size_t size) {
  size_t n = 0;
  while (n + 1 < size) {
    ssize_t r = read(fd, buf + n, 1);
    if (r <= 0 || buf[n] == '\n') break;
    n++;
  }
  buf[n] = 0;
  return n;
}

static int print_cid(void) {
  int fd = open("/dev/vsock", O_RDONLY);
  unsigned int cid = 0;
  if (fd < 0) return die("open /dev/vsock");
  if (ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) != 0) return die("IOCTL_VM_SOCKETS_GET_LOCAL_CID");
  printf("%u\n", cid);
  return 0;
}

static int listen_once(unsigned port) {
  struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
  char line[256];
  int s = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (s < 0) return die("socket");
  if (bind(s, (struct sockaddr*)&addr, sizeof(addr)) != 0) return die("bind");
  if (listen(s, 1) != 0) return die("listen");
  int c = accept(s, NULL, NULL);
  if (c < 0) return die("accept");
  read_line(c, line, sizeof(line));
  printf("GOT %s\n", line);
  fflush(stdout);
  const char reply[] = "pong-from-guest\n";
  if (write(c, reply, sizeof(reply) - 1) != (ssize_t)sizeof(reply) - 1) return die("write");
  close(c);
  return 0;
}

static int connect_once(unsigned cid, unsigned port, const char* msg) {
  struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
  char line[256];
  int s = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (s < 0) return die("socket");
  if (connect(s, (struct sockaddr*)&addr, sizeof(addr)) != 0) return die("connect");
  dprintf(s, "%s\n", msg);
  read_line(s, line, sizeof(line));
  printf("%s\n", line);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 2 && strcmp(argv[1], "cid") == 0) return print_cid();
  if (argc == 3 && strcmp(argv[1], "listen") == 0) return listen_once((unsigned)atoi(argv[2]));
  if (argc == 5 && strcmp(argv[1], "connect") == 0) {
    return connect_once((unsigned)atoi(argv[2]), (unsigned)atoi(argv[3]), argv[4]);
  }
  fprintf(stderr, "usage: vsock-test cid | listen PORT | connect CID PORT MSG\n");
  return 2;
}
