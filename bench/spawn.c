/* Run a command and report its own peak RSS: spawn REPORT CMD [ARGS...]
 *
 * Written as "<peak RSS KiB> <exit status>" to the file REPORT.  A process
 * forked from a big parent (pytest, say) would report the parent's memory
 * as its own peak; this launcher is tiny, so what its child reports is the
 * command's. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: spawn REPORT CMD [ARGS...]\n");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("spawn: fork");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[2], &argv[2]);
        perror("spawn: exec");
        _exit(127);
    }
    int status = 0;
    struct rusage usage;
    if (wait4(pid, &status, 0, &usage) < 0) {
        perror("spawn: wait4");
        return 2;
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    FILE *report = fopen(argv[1], "w");
    if (!report) {
        perror("spawn: report");
        return 2;
    }
    fprintf(report, "%ld %d\n", usage.ru_maxrss, code);
    fclose(report);
    return code;
}
