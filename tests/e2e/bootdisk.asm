; A boot sector for the iPXE sanboot test. It proves the disk is really read
; through iPXE's INT 13h -> iSCSI path: it prints a first line, reads a
; payload from the far end of the disk with INT 13h extensions (AH=42h),
; checks its magic and prints the text found there, on COM1 and the screen.
; nasm -f bin -DPAYLOAD_LBA=<n> -o mbr.bin bootdisk.asm
bits 16
org 0x7c00

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    mov [drive], dl
    mov dx, 0x3f9           ; COM1: no interrupts
    xor al, al
    out dx, al
    mov dx, 0x3fb           ; DLAB on
    mov al, 0x80
    out dx, al
    mov dx, 0x3f8           ; divisor 1: 115200 baud
    mov al, 1
    out dx, al
    mov dx, 0x3f9
    xor al, al
    out dx, al
    mov dx, 0x3fb           ; 8N1, DLAB off
    mov al, 3
    out dx, al
    mov si, hello
    call print
    mov si, dap             ; read PAYLOAD_SECTORS sectors at PAYLOAD_LBA to 0000:8000
    mov ah, 0x42
    mov dl, [drive]
    int 0x13
    jc fail
    mov si, 0x8000
    mov di, magic
    mov cx, 8
    repe cmpsb
    jne fail
    mov si, ok
    call print
    mov si, 0x8008          ; the text after the magic
    call print
    mov si, crlf
    call print
    jmp halt
fail:
    mov si, failed
    call print
halt:
    cli
    hlt
    jmp halt

print:                      ; SI: NUL-terminated string -> COM1 and BIOS teletype
    lodsb
    test al, al
    jz .done
    mov bl, al
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    mov al, bl
    mov dx, 0x3f8
    out dx, al
    mov ah, 0x0e
    xor bh, bh
    int 0x10
    jmp print
.done:
    ret

drive: db 0x80
hello: db "BOOTSVC-SANBOOT-START", 13, 10, 0
ok: db "BOOTSVC-SANBOOT-OK ", 0
failed: db "BOOTSVC-SANBOOT-FAIL", 13, 10, 0
crlf: db 13, 10, 0
magic: db "BOOTSVC!"
dap:
    db 0x10, 0
    dw PAYLOAD_SECTORS
    dw 0x8000, 0
    dq PAYLOAD_LBA

times 446 - ($ - $$) db 0
    db 0x80, 0, 2, 0, 0x83, 0, 0, 0   ; one active partition over the disk
    dd 1
    dd PAYLOAD_LBA
times 510 - ($ - $$) db 0
    dw 0xaa55
