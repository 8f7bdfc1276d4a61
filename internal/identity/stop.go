package identity

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Stopper stops a container through its runtime, so that the runtime
// records the exit itself and its shims stay consistent: the right way to
// kill a whole container where a runtime is reachable.
type Stopper interface {
	// Stop kills the container at once (no grace period: it is about to
	// be OOM-killed anyway). ErrNotFound: this runtime does not have it.
	Stop(ctx context.Context, id ID) error
}

// Stop sends SIGKILL to the container through the Docker Engine API
// (POST /containers/{id}/kill), which the daemon records as the exit.
func (d *Docker) Stop(ctx context.Context, id ID) error {
	info, err := d.inspectContainer(ctx, id.ContainerID)
	if err != nil {
		return err
	}
	if info.Sandbox {
		return fmt.Errorf("docker %s: %s is a pod sandbox: never stopped", d.socket, short(id.ContainerID))
	}
	u := url.URL{Scheme: "http", Host: "docker", Path: "/containers/" + id.ContainerID + "/kill", RawQuery: "signal=KILL"}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("docker %s: kill container %s: %w", d.socket, short(id.ContainerID), err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch resp.StatusCode {
	case http.StatusNoContent:
		return nil
	case http.StatusNotFound:
		return fmt.Errorf("docker %s: kill container %s: %w (%s)", d.socket, short(id.ContainerID), ErrNotFound, dockerMessage(body))
	}
	return fmt.Errorf("docker %s: kill container %s: HTTP %d: %s", d.socket, short(id.ContainerID), resp.StatusCode, dockerMessage(body))
}

// Stop asks the CRI runtime to stop the container with no grace period.
// A pod sandbox is refused: stopping it takes every container of the pod.
func (c *CRI) Stop(ctx context.Context, id ID) error {
	info, err := c.Inspect(ctx, id)
	if err != nil {
		return err
	}
	if info.Sandbox {
		return fmt.Errorf("cri %s: %s is a pod sandbox: never stopped", c.socket, short(id.ContainerID))
	}
	rc, err := c.rpc()
	if err != nil {
		return err
	}
	if _, err := rc.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id.ContainerID, Timeout: 0}); err != nil {
		return fmt.Errorf("cri %s: stop container %s: %w", c.socket, short(id.ContainerID), grpcErr(err))
	}
	return nil
}

// StopFirst stops the container through the first runtime that has it.
func StopFirst(ctx context.Context, id ID, stoppers ...Stopper) error {
	var errs []error
	for _, s := range stoppers {
		err := s.Stop(ctx, id)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return fmt.Errorf("container %s: no runtime to stop it", short(id.ContainerID))
	}
	return errors.Join(errs...)
}
