// Package notify turns kernel notifications into readable file descriptors
// served by one epoll set: the v1 memcg threshold and OOM eventfds, and
// inotify on the cgroup directories. Each mechanism is a small Watch; the
// guard loop waits on all of them with one Poller.
package notify

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Watch is one kernel notification source. Its Fd becomes readable when
// the kernel has something to say; Drain consumes that so the fd goes quiet.
type Watch interface {
	Fd() int
	Drain() error
	Close() error
}

// Poller is an epoll set plus a wake-up eventfd. Add, Remove, Wait and the
// closing of watched fds belong to the one goroutine that calls Wait, so no
// fd is ever closed under a waiter; Wake is safe from any goroutine.
type Poller struct {
	epfd   int
	wakefd int
	events []unix.EpollEvent
}

func NewPoller() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	p := &Poller{epfd: epfd, wakefd: wakefd, events: make([]unix.EpollEvent, 128)}
	if err := p.Add(wakefd); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Add watches fd for readability.
func (p *Poller) Add(fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll add fd %d: %w", fd, err)
	}
	return nil
}

// Remove stops watching fd. Call it before closing fd.
func (p *Poller) Remove(fd int) error {
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return fmt.Errorf("epoll del fd %d: %w", fd, err)
	}
	return nil
}

// Wake makes the current or next Wait return with woken set.
func (p *Poller) Wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(p.wakefd, one[:])
}

// Wait blocks until a watched fd is readable, Wake is called, or timeout
// passes (a negative timeout waits indefinitely). It returns the ready fds.
func (p *Poller) Wait(timeout time.Duration) (ready []int, woken bool, err error) {
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	n, err := unix.EpollWait(p.epfd, p.events, ms)
	if err == unix.EINTR {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("epoll_wait: %w", err)
	}
	ready = make([]int, 0, n)
	for _, ev := range p.events[:n] {
		fd := int(ev.Fd)
		if fd == p.wakefd {
			var buf [8]byte
			_, _ = unix.Read(p.wakefd, buf[:])
			woken = true
			continue
		}
		ready = append(ready, fd)
	}
	return ready, woken, nil
}

// Close releases the epoll set and the wake-up fd (not the watched fds).
func (p *Poller) Close() error {
	unix.Close(p.wakefd)
	return unix.Close(p.epfd)
}
