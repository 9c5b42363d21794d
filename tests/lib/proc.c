/*
 * Child processes and files for integration tests (see proc.h): spawning
 * with a kill-on-exit registry, readiness waits, temp dirs. Test-only code;
 * it favours being impossible to leak a process over being general.
 */
#include "tests/lib/proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "common/err.h"

extern char **environ;

struct t_proc {
	pid_t pid;
	int reaped;
	int status;
};

#define REG_MAX 64

/* The registry. reg_pids mirrors reg for the signal handler, which may not
 * take the mutex; a slot is published only once the child exists. */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct t_proc *reg[REG_MAX];
static volatile pid_t reg_pids[REG_MAX];
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

/* Temp dirs made by t_tmpdir and not yet removed: removed at exit and on
 * the fatal signals too, so a failed or interrupted test leaves no data
 * dirs behind (unless MERIDIAN_KEEP_TMP=1). */
#define DIR_MAX 32
#define DIR_LEN 512
static char dir_reg[DIR_MAX][DIR_LEN];
static volatile sig_atomic_t dir_used[DIR_MAX];
static int keep_tmp;

long long t_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void t_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void on_fatal_signal(int sig)
{
	static char *rm_argv[DIR_MAX + 4];
	int n = 0;

	/* Only async-signal-safe calls: kill the groups and reap them, remove
	 * the temp dirs with rm(1), then die of the same signal so the
	 * caller sees why we ended. */
	for (int i = 0; i < REG_MAX; i++) {
		pid_t pid = reg_pids[i];
		if (pid > 0)
			kill(-pid, SIGKILL);
	}
	for (int i = 0; i < REG_MAX; i++) {
		pid_t pid = reg_pids[i];
		if (pid > 0)
			waitpid(pid, NULL, 0);
	}
	rm_argv[n++] = "rm";
	rm_argv[n++] = "-rf";
	rm_argv[n++] = "--";
	for (int i = 0; i < DIR_MAX; i++)
		if (dir_used[i])
			rm_argv[n++] = dir_reg[i];
	rm_argv[n] = NULL;
	if (n > 3 && !keep_tmp) {
		char *envp[] = {NULL};
		pid_t pid = fork();
		if (pid == 0) {
			execve("/bin/rm", rm_argv, envp);
			_exit(127);
		}
		if (pid > 0)
			waitpid(pid, NULL, 0);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static void at_exit_cleanup(void)
{
	/* Processes first: they may still write into the dirs. */
	t_proc_stop_all();
	for (int i = 0; i < DIR_MAX; i++) {
		if (!dir_used[i])
			continue;
		if (keep_tmp)
			fprintf(stderr, "proc: keeping %s\n", dir_reg[i]);
		else
			t_rmtree(dir_reg[i]);
		dir_used[i] = 0;
	}
}

static void reg_init(void)
{
	static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
	const char *keep = getenv("MERIDIAN_KEEP_TMP");
	struct sigaction sa;

	keep_tmp = keep && strcmp(keep, "1") == 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_fatal_signal;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
	atexit(at_exit_cleanup);
}

/*
 * Registered before main() so that at_exit_cleanup, as the first atexit
 * handler, runs last: a test's own atexit handler (which may still call
 * t_etcd_free or t_proc_stop on its handles) then runs while those handles
 * are alive.
 */
__attribute__((constructor)) static void reg_init_early(void)
{
	pthread_once(&reg_once, reg_init);
}

static void dir_add(const char *path)
{
	if (strlen(path) >= DIR_LEN)
		return; /* untracked: the caller still removes it */
	pthread_mutex_lock(&reg_mu);
	for (int i = 0; i < DIR_MAX; i++) {
		if (!dir_used[i]) {
			snprintf(dir_reg[i], DIR_LEN, "%s", path);
			dir_used[i] = 1;
			break;
		}
	}
	pthread_mutex_unlock(&reg_mu);
}

static void dir_remove(const char *path)
{
	pthread_mutex_lock(&reg_mu);
	for (int i = 0; i < DIR_MAX; i++)
		if (dir_used[i] && strcmp(dir_reg[i], path) == 0)
			dir_used[i] = 0;
	pthread_mutex_unlock(&reg_mu);
}

static int reg_add(struct t_proc *p)
{
	int rv = MER_EBUSY;

	pthread_mutex_lock(&reg_mu);
	for (int i = 0; i < REG_MAX; i++) {
		if (!reg[i]) {
			reg[i] = p;
			reg_pids[i] = p->pid;
			rv = 0;
			break;
		}
	}
	pthread_mutex_unlock(&reg_mu);
	return rv;
}

static void reg_remove(struct t_proc *p)
{
	pthread_mutex_lock(&reg_mu);
	for (int i = 0; i < REG_MAX; i++) {
		if (reg[i] == p) {
			reg[i] = NULL;
			reg_pids[i] = 0;
		}
	}
	pthread_mutex_unlock(&reg_mu);
}

int t_free_port(int *port)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int fd, rv = MER_EIO;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return MER_EIO;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = 0;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		goto out_close;
	if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
		goto out_close;
	*port = ntohs(sa.sin_port);
	rv = 0;
out_close:
	close(fd);
	return rv;
}

/* environ with the NAME=value pairs of extra replacing or adding entries. The
 * strings are borrowed; only the array is allocated. */
static char **build_env(char *const extra[])
{
	size_t n = 0, m = 0, k = 0;
	char **envp;

	while (environ && environ[n])
		n++;
	while (extra && extra[m])
		m++;
	envp = calloc(n + m + 1, sizeof(*envp));
	if (!envp)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		const char *eq = strchr(environ[i], '=');
		size_t nl = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
		int overridden = 0;
		for (size_t j = 0; j < m; j++) {
			if (strncmp(extra[j], environ[i], nl) == 0 &&
			    extra[j][nl] == '=')
				overridden = 1;
		}
		if (!overridden)
			envp[k++] = environ[i];
	}
	for (size_t j = 0; j < m; j++)
		envp[k++] = extra[j];
	envp[k] = NULL;
	return envp;
}

int t_proc_spawn(const char *path, char *const argv[], char *const env[],
		 const char *log_path, struct t_proc **out)
{
	struct t_proc *p = NULL;
	char **envp = NULL;
	int logfd = -1, nullfd = -1, errpipe[2] = {-1, -1};
	int rv = MER_ENOMEM, child_errno = 0;
	pid_t parent = getpid(), pid;
	ssize_t got;

	*out = NULL;
	pthread_once(&reg_once, reg_init);
	/* Everything the child needs is prepared here: after fork in a
	 * threaded program only async-signal-safe calls are allowed. */
	p = calloc(1, sizeof(*p));
	envp = build_env(env);
	if (!p || !envp)
		goto out_free;
	rv = MER_EIO;
	logfd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (logfd < 0 || nullfd < 0 || pipe2(errpipe, O_CLOEXEC) != 0)
		goto out_close;

	pid = fork();
	if (pid < 0)
		goto out_close;
	if (pid == 0) {
		sigset_t all;
		int e;

		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		signal(SIGPIPE, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		if (dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 ||
		    dup2(logfd, 2) < 0)
			_exit(127);
		/* Keep only stdio and the exec-error pipe (close-on-exec). */
		if (errpipe[1] > 3)
			close_range(3, (unsigned)errpipe[1] - 1, 0);
		close_range((unsigned)errpipe[1] + 1, ~0U, 0);
		execve(path, argv, envp);
		e = errno;
		if (write(errpipe[1], &e, sizeof(e)) < 0)
			_exit(126);
		_exit(127);
	}
	setpgid(pid, pid); /* also here, so it holds before we signal it */
	close(errpipe[1]);
	errpipe[1] = -1;
	do {
		got = read(errpipe[0], &child_errno, sizeof(child_errno));
	} while (got < 0 && errno == EINTR);
	p->pid = pid;
	if (got > 0) {
		/* exec failed: say so in the log, reap, report. */
		dprintf(logfd, "t_proc_spawn: cannot execute %s: %s\n", path,
			strerror(child_errno));
		waitpid(pid, NULL, 0);
		rv = MER_EIO;
		goto out_close;
	}
	if (reg_add(p) != 0) {
		kill(-pid, SIGKILL);
		waitpid(pid, NULL, 0);
		rv = MER_EBUSY;
		goto out_close;
	}
	*out = p;
	p = NULL;
	rv = 0;
out_close:
	if (errpipe[0] >= 0)
		close(errpipe[0]);
	if (errpipe[1] >= 0)
		close(errpipe[1]);
	if (nullfd >= 0)
		close(nullfd);
	if (logfd >= 0)
		close(logfd);
out_free:
	free(envp);
	free(p);
	return rv;
}

pid_t t_proc_pid(const struct t_proc *p)
{
	return p->pid;
}

static int leader_gone(pid_t pid);

int t_proc_exited(struct t_proc *p, int *status)
{
	if (!p->reaped && leader_gone(p->pid)) {
		int st = 0;
		/* The zombie leader keeps the group id ours: kill
		 * stragglers it may have forked before reaping it. */
		kill(-p->pid, SIGKILL);
		while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR)
			;
		p->reaped = 1;
		p->status = st;
	}
	if (p->reaped && status)
		*status = p->status;
	return p->reaped;
}

/* Non-zero once the leader has exited; leaves it a zombie so that its pid
 * (and group id) cannot be reused while we still signal the group. */
static int leader_gone(pid_t pid)
{
	siginfo_t si;

	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
		return errno == ECHILD;
	return si.si_pid == pid;
}

int t_proc_stop(struct t_proc *p, int grace_ms, int *status)
{
	int rv = 0, st = 0;

	if (!p)
		return 0;
	reg_remove(p);
	if (p->reaped) {
		st = p->status;
		goto out;
	}
	kill(-p->pid, SIGTERM);
	long long deadline = t_now_ms() + grace_ms;
	while (!leader_gone(p->pid) && t_now_ms() < deadline)
		t_sleep_ms(5);
	if (!leader_gone(p->pid))
		rv = MER_ETIMEDOUT;
	kill(-p->pid, SIGKILL);
	while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR)
		;
out:
	if (status)
		*status = st;
	free(p);
	return rv;
}

void t_proc_stop_all(void)
{
	for (;;) {
		struct t_proc *p = NULL;

		pthread_mutex_lock(&reg_mu);
		for (int i = 0; i < REG_MAX && !p; i++)
			p = reg[i];
		pthread_mutex_unlock(&reg_mu);
		if (!p)
			return;
		t_proc_stop(p, 3000, NULL);
	}
}

int t_wait_port(int port, int timeout_ms)
{
	long long deadline = t_now_ms() + timeout_ms;
	struct sockaddr_in sa;

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons((uint16_t)port);
	for (;;) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return MER_EIO;
		int ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		close(fd);
		if (ok)
			return 0;
		if (t_now_ms() >= deadline)
			return MER_ETIMEDOUT;
		t_sleep_ms(20);
	}
}

static size_t discard(char *ptr, size_t size, size_t nmemb, void *arg)
{
	(void)ptr;
	(void)arg;
	return size * nmemb;
}

static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int wait_http(const char *url, const char *body, const char *ca_file,
		     const char *cert_file, const char *key_file,
		     int timeout_ms, struct t_proc *p)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	long long deadline = t_now_ms() + timeout_ms;
	CURL *h;
	int rv = MER_ETIMEDOUT;

	pthread_once(&once, curl_init_once);
	h = curl_easy_init();
	if (!h)
		return MER_ENOMEM;
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 1000L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 2000L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
	if (ca_file)
		curl_easy_setopt(h, CURLOPT_CAINFO, ca_file);
	if (cert_file)
		curl_easy_setopt(h, CURLOPT_SSLCERT, cert_file);
	if (key_file)
		curl_easy_setopt(h, CURLOPT_SSLKEY, key_file);
	if (body)
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	for (;;) {
		long code = 0;
		if (curl_easy_perform(h) == CURLE_OK &&
		    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code) ==
			CURLE_OK &&
		    code >= 200 && code < 300) {
			rv = 0;
			break;
		}
		if (p && t_proc_exited(p, NULL)) {
			rv = MER_ECLOSED;
			break;
		}
		if (t_now_ms() >= deadline)
			break;
		t_sleep_ms(50);
	}
	curl_easy_cleanup(h);
	return rv;
}

int t_wait_http(const char *url, const char *body, int timeout_ms,
		struct t_proc *p)
{
	return wait_http(url, body, NULL, NULL, NULL, timeout_ms, p);
}

int t_wait_https(const char *url, const char *body, const char *ca_file,
		 const char *cert_file, const char *key_file, int timeout_ms,
		 struct t_proc *p)
{
	return wait_http(url, body, ca_file, cert_file, key_file, timeout_ms,
			 p);
}

/* Runs openssl with argv (NULL-terminated, without argv[0]); 0 when it
 * exits 0. */
static int run_openssl(const char *log, char *const args[])
{
	char *argv[32];
	struct t_proc *p = NULL;
	int n = 0, st = 0, rv;

	argv[n++] = "openssl";
	while (args[n - 1] && n < 31) {
		argv[n] = args[n - 1];
		n++;
	}
	argv[n] = NULL;
	rv = t_proc_spawn("/usr/bin/openssl", argv, NULL, log, &p);
	if (rv != 0)
		return rv;
	long long deadline = t_now_ms() + 30000;
	while (!t_proc_exited(p, &st) && t_now_ms() < deadline)
		t_sleep_ms(5);
	if (t_proc_stop(p, 100, &st) != 0)
		return MER_ETIMEDOUT;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : MER_EIO;
}

static int write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	int ok;

	if (!f)
		return MER_EIO;
	ok = fputs(text, f) >= 0;
	ok = fclose(f) == 0 && ok;
	return ok ? 0 : MER_EIO;
}

/* A key and a certificate signed by the CA (or self-signed when ca is
 * NULL), with the X.509v3 extensions in ext. */
static int make_cert(const char *dir, const char *log, const char *name,
		     const char *cn, const char *ext, const struct t_certs *ca,
		     char *cert, char *key)
{
	char csr[4200], extf[4200], subj[128], ca_key[4200];
	int rv;

	snprintf(key, 4096, "%s/%s.key", dir, name);
	snprintf(cert, 4096, "%s/%s.crt", dir, name);
	snprintf(csr, sizeof(csr), "%s/%s.csr", dir, name);
	snprintf(extf, sizeof(extf), "%s/%s.ext", dir, name);
	snprintf(subj, sizeof(subj), "/CN=%s", cn);
	if ((rv = write_text(extf, ext)) != 0)
		return rv;
	char *req[] = {"req",	 "-new",     "-newkey",
		       "ec",	 "-pkeyopt", "ec_paramgen_curve:prime256v1",
		       "-nodes", "-keyout",  key,
		       "-out",	 csr,	     "-subj",
		       subj,	 NULL};
	if ((rv = run_openssl(log, req)) != 0)
		return rv;
	if (!ca) {
		char *self[] = {"x509",	    "-req", "-in", csr,	    "-key",
				key,	    "-out", cert,  "-days", "1",
				"-extfile", extf,   NULL};
		return run_openssl(log, self);
	}
	snprintf(ca_key, sizeof(ca_key), "%s/ca.key", dir);
	char *sign[] = {"x509",	  "-req",     "-in",
			csr,	  "-CA",      (char *)ca->ca,
			"-CAkey", ca_key,     "-CAcreateserial",
			"-out",	  cert,	      "-days",
			"1",	  "-extfile", extf,
			NULL};
	return run_openssl(log, sign);
}

int t_make_certs(const char *dir, struct t_certs *out)
{
	char log[4200], ca_key[4096];
	int rv;

	memset(out, 0, sizeof(*out));
	snprintf(log, sizeof(log), "%s/openssl.log", dir);
	rv = make_cert(dir, log, "ca", "meridian-test-ca",
		       "basicConstraints=critical,CA:TRUE\n"
		       "keyUsage=critical,keyCertSign,cRLSign\n",
		       NULL, out->ca, ca_key);
	if (rv)
		return rv;
	rv = make_cert(dir, log, "server", "127.0.0.1",
		       "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
		       "extendedKeyUsage=serverAuth,clientAuth\n",
		       out, out->server_cert, out->server_key);
	if (rv)
		return rv;
	return make_cert(dir, log, "client", "meridian-test-client",
			 "extendedKeyUsage=clientAuth\n", out, out->client_cert,
			 out->client_key);
}

int t_tmpdir(const char *tag, char **out)
{
	const char *base = getenv("TMPDIR");
	char buf[4096];
	int n;

	*out = NULL;
	if (!base || !*base)
		base = "/tmp";
	n = snprintf(buf, sizeof(buf), "%s/meridian-%s-XXXXXX", base,
		     tag ? tag : "test");
	if (n < 0 || (size_t)n >= sizeof(buf))
		return MER_ETOOBIG;
	if (!mkdtemp(buf))
		return MER_EIO;
	*out = strdup(buf);
	if (!*out) {
		rmdir(buf);
		return MER_ENOMEM;
	}
	pthread_once(&reg_once, reg_init);
	dir_add(buf);
	return 0;
}

static int rm_one(const char *path, const struct stat *sb, int flag,
		  struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	/* Keep going on errors: remove as much as we can. */
	remove(path);
	return 0;
}

int t_rmtree(const char *path)
{
	struct stat st;

	if (!path)
		return 0;
	if (lstat(path, &st) != 0)
		return errno == ENOENT ? 0 : MER_EIO;
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
	if (lstat(path, &st) == 0)
		return MER_EIO;
	dir_remove(path);
	return 0;
}

int t_read_file(const char *path, char **out, size_t *len)
{
	FILE *f;
	char *buf = NULL;
	size_t n = 0, cap = 0;
	int rv = MER_EIO;

	*out = NULL;
	f = fopen(path, "rb");
	if (!f)
		return MER_EIO;
	for (;;) {
		if (cap - n < 4096) {
			size_t ncap = cap ? cap * 2 : 8192;
			char *nb = realloc(buf, ncap);
			if (!nb) {
				rv = MER_ENOMEM;
				goto out;
			}
			buf = nb;
			cap = ncap;
		}
		size_t got = fread(buf + n, 1, cap - n - 1, f);
		n += got;
		if (got == 0)
			break;
	}
	if (ferror(f))
		goto out;
	buf[n] = '\0';
	*out = buf;
	buf = NULL;
	if (len)
		*len = n;
	rv = 0;
out:
	free(buf);
	fclose(f);
	return rv;
}
