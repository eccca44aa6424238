package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -strip llvm-strip-19 -target amd64,arm64 -go-package bpf -type event -type event_type -type event_flag -type close_op -type owner_op -type stat_index -type sock_rec -type holder_rec -type close_rec -type close_key -type close_slot -type state_delta -type sys_delta -type end_event -type delta_part -type tuple -type tcp_part -type sockopt_bit -type watch_flag -type act_req -type placeholder Ghostconn ghostconn.bpf.c -- -O2 -g -mcpu=v3 -Wall -Werror -nostdinc -Iheaders
